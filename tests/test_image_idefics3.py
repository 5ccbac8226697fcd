"""preprocess() against the transformers Idefics3 / SmolVLM image processor (the test oracle).

Configured like SmolVLM-256M-Instruct's preprocessor_config.json: size={"longest_edge": 2048},
max_image_size={"longest_edge": 512}, resample=1 (LANCZOS), rescale 1/255, mean = std = 0.5.
transformers is a dev dependency; this test must run (not skip) in CI.
"""

import numpy as np
import pytest
from PIL import Image

try:  # transformers >= 5: explicit PIL backend (the default backend needs torchvision)
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil as Idefics3Processor,
    )
    from transformers.models.smolvlm.image_processing_pil_smolvlm import (
        SmolVLMImageProcessorPil as SmolVLMProcessor,
    )
except ImportError:  # transformers 4.x: the slow processors are the PIL implementation
    from transformers import Idefics3ImageProcessor as Idefics3Processor
    from transformers import SmolVLMImageProcessor as SmolVLMProcessor

from edgevlm.image import PreprocessConfig, preprocess

SMOLVLM_256M = dict(
    do_resize=True, size={"longest_edge": 2048}, max_image_size={"longest_edge": 512},
    resample=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True, do_pad=True,
)
OURS = PreprocessConfig(tile_size=512, longest_edge=2048, resample="lanczos", max_tiles=16,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), rescale_factor=1 / 255)

SIZES = [  # (width, height)
    (20, 15),      # tiny: upscaled to 2048 x 1536, 3 x 4 tiles
    (1200, 90),    # very wide
    (90, 1100),    # very tall
    (512, 512),    # square
    (640, 480),
    (1900, 1700),  # 4 x 4 split
    (333, 777),    # odd sizes, portrait
]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference(processor_cls, image: Image.Image, **overrides):
    proc = processor_cls(**{**SMOLVLM_256M, **overrides})
    out = proc(images=[[image]], return_tensors="np", return_row_col_info=True)
    return np.asarray(out["pixel_values"])[0], out["rows"][0][0], out["cols"][0][0]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_split_matches_processor(size):
    image = random_image(*size, seed=size[0] * 7919 + size[1])
    ref, ref_rows, ref_cols = reference(Idefics3Processor, image, do_image_splitting=True)
    pv, rows, cols = preprocess(image, PreprocessConfig(**{**OURS.to_dict(), "do_split": True}))
    assert (rows, cols) == (ref_rows, ref_cols)
    assert pv.shape == ref.shape == (rows * cols + 1, 3, 512, 512)
    assert pv.dtype == np.float32
    assert np.abs(pv - ref).max() <= 1e-6


@pytest.mark.parametrize("size", SIZES[:5], ids=[f"{w}x{h}" for w, h in SIZES[:5]])
def test_no_split_matches_processor(size):
    image = random_image(*size, seed=size[0] + 31 * size[1])
    ref, ref_rows, ref_cols = reference(Idefics3Processor, image, do_image_splitting=False)
    pv, rows, cols = preprocess(image, OURS)
    assert (rows, cols) == (ref_rows, ref_cols) == (0, 0)
    assert pv.shape == ref.shape == (1, 3, 512, 512)
    assert np.abs(pv - ref).max() <= 1e-6


@pytest.mark.parametrize("size", [(300, 200), (512, 100), (40, 60)])
def test_split_without_tiles_matches_processor(size):
    """longest_edge == tile: the image fits one tile, so the processor reports rows = cols = 0."""
    image = random_image(*size, seed=5)
    ref, ref_rows, ref_cols = reference(Idefics3Processor, image, do_image_splitting=True,
                                        size={"longest_edge": 512})
    cfg = PreprocessConfig(tile_size=512, longest_edge=512, resample="lanczos", do_split=True)
    pv, rows, cols = preprocess(image, cfg)
    assert (rows, cols) == (ref_rows, ref_cols) == (0, 0)
    assert pv.shape == ref.shape == (1, 3, 512, 512)
    assert np.abs(pv - ref).max() <= 1e-6


def test_smolvlm_processor_agrees():
    image = random_image(700, 300, seed=11)
    ref, ref_rows, ref_cols = reference(SmolVLMProcessor, image, do_image_splitting=True)
    pv, rows, cols = preprocess(image, PreprocessConfig(**{**OURS.to_dict(), "do_split": True}))
    assert (rows, cols) == (ref_rows, ref_cols)
    assert np.abs(pv - ref).max() <= 1e-6
