"""Safe image loading and Idefics3/SmolVLM-exact preprocessing (numpy + Pillow only).

`load_image` turns an untrusted path / bytes / PIL image into an 8-bit RGB PIL image, or raises
`ImageError` with a one-line message: format allow-list, pixel cap checked from the header before
decoding, EXIF orientation, first frame, alpha composited on white, CMYK / 16-bit / palette handled.

`preprocess` turns that image into normalised float32 tiles, following the transformers
`Idefics3ImageProcessor` rules (geometry in `edgevlm.image_tiling`).
"""

import io
import os
import struct
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps

from edgevlm import image_tiling
from edgevlm.errors import ConfigError, ImageError
from edgevlm.mapping import check_keys

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 40_000_000
MAX_TILES_LIMIT = 64  # hard ceiling on PreprocessConfig.max_tiles

_FORMAT_ALIASES = {"MPO": "JPEG"}  # phone JPEGs with an MPF block open as "MPO" via the JPEG plugin
_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
# What a malformed file can make Pillow raise while parsing or decoding.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
    ZeroDivisionError, OverflowError, MemoryError, Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


# --------------------------------------------------------------------------- loading


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `source` (path, bytes, or PIL image) as an 8-bit RGB image; ImageError if unacceptable."""
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ImageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    name = _display_name(source)
    try:
        with warnings.catch_warnings():
            # Pillow's UserWarnings are about metadata it skipped (corrupt EXIF, oversized tags): the
            # pixels are still decoded, and a warning would print extra lines on the command line
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, Image.Image):
                return _finish(source, name, max_pixels)
            with _open(source) as im:
                return _finish(im, name, max_pixels)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image is too large (decompression bomb check)") from None
    except Image.UnidentifiedImageError:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise ImageError(f"{name}: not a recognised image (allowed formats: {allowed})") from None
    except _DECODE_ERRORS as e:
        raise ImageError(f"{name}: corrupt or truncated image ({_reason(e, source)})") from None


def _display_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source)) or "<image>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        return "<image>"
    raise ImageError(f"unsupported image source of type {type(source).__name__}")


def _open(source) -> Image.Image:
    """Lazily open (header only) with Pillow restricted to the allow-listed decoders."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    return Image.open(source, formats=sorted(ALLOWED_FORMATS))


def _finish(im: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Check format and pixel cap (before decoding), decode frame 0, orient, convert to RGB."""
    fmt = _FORMAT_ALIASES.get(im.format, im.format)
    if fmt is not None and fmt not in ALLOWED_FORMATS:
        raise ImageError(f"{name}: unsupported image format {im.format}")
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    if im.tell() != 0:  # first frame of an animated GIF / WebP or multi-page TIFF (not n_frames:
        im.seek(0)      # counting frames walks the whole file)
    im.load()  # decode now: truncated data fails here, inside the error handling
    im = ImageOps.exif_transpose(im)  # returns a new image (a copy when no orientation tag)
    return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha on white, CMYK, 16-bit and float scaled."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _has_alpha(im: Image.Image) -> bool:
    """RGBA / LA / PA (and premultiplied), a transparency key, or an RGBA palette (Pillow >= 10.0)."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit / 32-bit integer / float single-channel array to uint8 (all 256 levels)."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = a / 257.0  # 16-bit full range: 0 -> 0, 65535 -> 255
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = a * 255.0  # float image in [0, 1]
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))  # arbitrary range: stretch to 0..255
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _reason(e: BaseException, source) -> str:
    """First line of an exception message, with any machine path reduced to its base name."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        for p in {os.path.abspath(path), path}:
            text = text.replace(p, os.path.basename(path))
    return text[:200]


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PreprocessConfig:
    """Image preprocessing settings. SmolVLM-256M: tile_size=512, longest_edge=2048, lanczos, do_split."""

    tile_size: int = 96  # square tile edge fed to the vision encoder
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"  # "lanczos" | "bicubic" | "bilinear"
    do_split: bool = False  # Idefics3 splitting into rows x cols tiles + one global image
    longest_edge: int = 96  # first resize: longest edge to this (SmolVLM: 2048)
    max_tiles: int = 16  # hard cap on rows * cols, checked before any pixel work

    def __post_init__(self):
        try:
            object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
            object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        except (TypeError, ValueError):
            raise ConfigError("preprocess mean and std must be lists of 3 numbers") from None
        for key in ("tile_size", "longest_edge", "max_tiles"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"preprocess {key} must be a positive integer, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ConfigError("preprocess mean and std must have 3 values each, std non-zero")
        # magnitudes that keep the float32 normalisation finite (no overflow / divide warnings)
        if not all(abs(m) <= 1e6 for m in self.mean) or not all(1e-6 <= abs(s) <= 1e6 for s in self.std):
            raise ConfigError("preprocess mean must be within +-1e6 and std within 1e-6..1e6 in magnitude")
        if not isinstance(self.resample, str) or self.resample not in _RESAMPLE:
            raise ConfigError(f"preprocess resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if not (isinstance(self.rescale_factor, (int, float)) and not isinstance(self.rescale_factor, bool)
                and 0 < self.rescale_factor <= 1e6):
            raise ConfigError(f"preprocess rescale_factor must be in (0, 1e6], got {self.rescale_factor!r}")
        if not isinstance(self.do_split, bool):
            raise ConfigError(f"preprocess do_split must be true or false, got {self.do_split!r}")
        if self.max_tiles > MAX_TILES_LIMIT:
            raise ConfigError(f"preprocess max_tiles must be at most {MAX_TILES_LIMIT}, got {self.max_tiles}")
        if self.do_split and image_tiling.max_grid(self.longest_edge, self.tile_size) > self.max_tiles:
            raise ConfigError(
                f"preprocess longest_edge {self.longest_edge} with tile_size {self.tile_size} can need "
                f"more than max_tiles={self.max_tiles} tiles; lower longest_edge or raise max_tiles"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(**check_keys(cls, d, "preprocess config"))


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> tuple[np.ndarray, int, int]:
    """Image -> (pixel_values float32 (tiles, 3, tile, tile), rows, cols), as Idefics3ImageProcessor.

    Both modes first resize to `longest_edge` keeping the aspect ratio (as the processor's do_resize).
    do_split=False: one tile, that image squashed to tile x tile; rows = cols = 0.
    do_split=True: resize to multiples of the tile, cut rows x cols tiles (row-major), append the
    global image (tile x tile); an image that fits one tile gives one tile and rows = cols = 0.
    """
    if not isinstance(image, Image.Image):
        raise ImageError(f"preprocess expects a PIL image, got {type(image).__name__}")
    image = image if image.mode == "RGB" else to_rgb(image)
    resample, t = _RESAMPLE[cfg.resample], cfg.tile_size

    h, w = image_tiling.longest_edge_size(image.height, image.width, cfg.longest_edge)
    if not cfg.do_split:
        resized = image.resize((w, h), resample=resample)
        return _normalize([np.asarray(resized.resize((t, t), resample=resample))], cfg), 0, 0

    gh, gw = image_tiling.encoder_grid_size(h, w, t)
    rows, cols = image_tiling.split_grid(gh, gw, t)
    if rows * cols > cfg.max_tiles:  # checked before resizing (unreachable for a validated config)
        raise ImageError(f"image needs {rows}x{cols} tiles, over the limit of {cfg.max_tiles}")
    grid = image.resize((w, h), resample=resample).resize((gw, gh), resample=resample)
    if rows == 0:
        return _normalize([np.asarray(grid)], cfg), 0, 0  # grid is exactly t x t here
    arr = np.asarray(grid)  # (gh, gw, 3) uint8
    tiles = [arr[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(rows) for c in range(cols)]
    tiles.append(np.asarray(grid.resize((t, t), resample=resample)))  # global image last
    return _normalize(tiles, cfg), rows, cols


def _normalize(tiles: list, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HWC tiles -> float32 (N, 3, t, t): (x * rescale - mean) / std (same rounding as transformers)."""
    x = np.stack(tiles)  # (N, t, t, 3) uint8
    x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    x = (x - mean) / std  # (N, t, t, 3) float32
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, t, t)


def num_tiles_bound(cfg: PreprocessConfig) -> int:
    """Most tiles `preprocess` can return under `cfg` (split grid plus the global image)."""
    return image_tiling.max_grid(cfg.longest_edge, cfg.tile_size) + 1 if cfg.do_split else 1

