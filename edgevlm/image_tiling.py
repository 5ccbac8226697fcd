"""Idefics3 / SmolVLM image-splitting geometry (pure integer/float arithmetic, no pixels).

These functions reproduce, expression for expression, the size rules of the transformers
`Idefics3ImageProcessor` / `SmolVLMImageProcessor` (PIL backend), so that `edgevlm.image.preprocess`
yields bit-identical pixel values:

1. `longest_edge_size`: scale so the longest edge equals `longest_edge` (up- or down-scaling),
   the other edge truncated with `int()` and bumped to the next even number; then, if an edge
   exceeds MAX_IMAGE_SIZE, scale down again (truncating, no even rounding).
2. `encoder_grid_size`: round the longest edge up to a multiple of the tile size, recompute the
   other edge from the aspect ratio (`int()`), and round it up to a multiple of the tile size.
3. `split_grid`: rows x cols tiles when either edge exceeds one tile, else (0, 0): no split.
"""

import math

MAX_IMAGE_SIZE = 4096  # absolute cap on either edge after the longest-edge resize (as transformers)


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """(height, width) after resizing so the longest edge is `longest_edge`, keeping aspect ratio."""
    aspect_ratio = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = longest_edge
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    height, width = max(height, 1), max(width, 1)
    return _cap_size(height, width, MAX_IMAGE_SIZE)


def _cap_size(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Scale (height, width) down so neither edge exceeds max_len (no-op when already within)."""
    aspect_ratio = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect_ratio)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def encoder_grid_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """(height, width), both multiples of `tile`, that the image is resized to before splitting."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


def split_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of the encoder grid size; (0, 0) means no split."""
    if height > tile or width > tile:
        return (height - tile) // tile + 1, (width - tile) // tile + 1
    return 0, 0


def max_grid(longest_edge: int, tile: int) -> int:
    """Upper bound on rows * cols for any input image under these settings."""
    longest = min(longest_edge, MAX_IMAGE_SIZE)
    edge = math.ceil((longest + longest % 2) / tile)  # an odd edge can be bumped to the next even
    return edge * edge
