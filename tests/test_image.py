"""edgevlm.image: safe loading (every fixture generated here) and preprocess shapes/values."""

import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from edgevlm.errors import ConfigError, ImageError
from edgevlm.image import PreprocessConfig, load_image, preprocess

BLOCK = 16
COLORS = np.array(  # 3 rows x 4 cols of saturated, pairwise distinct block colours
    [[(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)],
     [(0, 255, 255), (255, 0, 255), (0, 0, 0), (255, 255, 255)],
     [(128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 128)]],
    dtype=np.uint8,
)


def upright() -> np.ndarray:
    """(48, 64, 3) asymmetric image: 3 x 4 blocks of 16 px."""
    return np.repeat(np.repeat(COLORS, BLOCK, axis=0), BLOCK, axis=1)


# Stored pixel layout for each EXIF orientation, written from the TIFF/EXIF spec's definition
# (where the stored row 0 / column 0 lie in the upright picture), independent of Pillow.
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],                           # row0 top, col0 right
    3: lambda u: u[::-1, ::-1],                        # row0 bottom, col0 right
    4: lambda u: u[::-1, :],                           # row0 bottom, col0 left
    5: lambda u: u.transpose(1, 0, 2),                 # row0 left, col0 top
    6: lambda u: np.rot90(u, 1),                       # row0 right, col0 top
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),     # row0 right, col0 bottom
    8: lambda u: np.rot90(u, -1),                      # row0 left, col0 bottom
}


def block_centres(a: np.ndarray) -> np.ndarray:
    """(3, 4, 3) mean colour of the interior of each block (away from JPEG edge ringing)."""
    h, w = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    b = a.astype(np.float64).reshape(h, BLOCK, w, BLOCK, 3)[:, 4:-4, :, 4:-4]
    return b.mean(axis=(1, 3))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright())))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (64, 48)
    diff = np.abs(block_centres(np.asarray(im)) - COLORS.astype(np.float64))
    assert diff.max() < 12, diff.max()


def test_palette_transparency_is_white(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    im.paste(0, (0, 0, 4, 8))  # left half: index 0, declared transparent
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    a = np.asarray(load_image(path))
    assert (a[:, :4] == 255).all()
    assert (a[:, 4:] == (200, 10, 10)).all()


def test_la_and_rgba_composited_on_white(tmp_path):
    la = Image.fromarray(np.dstack([np.zeros((4, 4), np.uint8), np.full((4, 4), 128, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    assert np.abs(np.asarray(load_image(tmp_path / "la.png")).astype(int) - 127).max() <= 1
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 2:, 3] = 255  # right half opaque red, left half fully transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = np.asarray(load_image(tmp_path / "rgba.png"))
    assert (a[:, :2] == 255).all() and (a[:, 2:] == (255, 0, 0)).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", "JPEG", quality=95)
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB"
    assert np.abs(np.asarray(im).astype(int) - (255, 0, 0)).max() < 10


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_ramp_keeps_256_levels(tmp_path, fmt):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / f"ramp.{fmt.lower()}"
    Image.fromarray(ramp).save(path, fmt)
    a = np.asarray(load_image(path))
    assert a.dtype == np.uint8 and a[0, 0, 0] == 0 and a[-1, -1, 0] == 255
    assert len(np.unique(a)) == 256
    assert (np.diff(a[..., 0].ravel().astype(int)) >= 0).all()  # monotonic
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "a.gif") as check:
        assert check.n_frames == 3
    a = np.asarray(load_image(tmp_path / "a.gif"))
    assert (a == (255, 0, 0)).all()


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel(tmp_path, mode):
    Image.new(mode, (5, 3), 255).save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (5, 3) and (np.asarray(im) == 255).all()


def test_bytes_and_pil_sources(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(upright()).save(buf, "PNG")
    assert (np.asarray(load_image(buf.getvalue())) == upright()).all()
    assert (np.asarray(load_image(Image.fromarray(upright()))) == upright()).all()
    assert load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_truncated_files_raise_image_error(tmp_path, fmt):
    data = encoded(fmt)
    path = tmp_path / "cut.img"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert "\n" not in str(e.value) and str(tmp_path) not in str(e.value)
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_random_bytes_and_empty(tmp_path):
    junk = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for bad in (junk, b"", b"\x89PNG\r\n\x1a\n" + junk):
        with pytest.raises(ImageError):
            load_image(bad)


@pytest.mark.parametrize("fmt,ext", [("ICO", "ico"), ("PPM", "ppm"), ("TGA", "tga")])
def test_unsupported_format(tmp_path, fmt, ext):
    path = tmp_path / f"x.{ext}"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path, fmt)
    with pytest.raises(ImageError, match="allowed formats"):
        load_image(path)
    with Image.open(path) as opened:  # an already-open image of a disallowed format
        with pytest.raises(ImageError, match="unsupported image format"):
            load_image(opened)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, then a tiny (wrong) IDAT and IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def test_pixel_cap_checked_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(7_000, 7_000))  # 49 M pixels: under Pillow's own bomb limit
    with pytest.raises(ImageError, match="over the limit"):  # not "truncated": never decoded
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path)  # 49 M pixels > default 40 M
    with pytest.raises(ImageError, match="over the limit"):
        load_image(Image.new("L", (100, 100)), max_pixels=9_999)


def test_pillow_bomb_error_and_warning_are_image_errors(tmp_path):
    before = list(warnings.filters)
    with pytest.raises(ImageError, match="too large"):  # > 2 x Pillow's MAX_IMAGE_PIXELS: error
        load_image(png_header_only(20_000, 20_000), max_pixels=10**10)
    with pytest.raises(ImageError, match="too large"):  # > MAX_IMAGE_PIXELS: warning made error
        load_image(png_header_only(10_000, 10_000), max_pixels=10**10)
    assert warnings.filters == before  # no global warnings state changed


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="nope.png: file not found") as e:
        load_image(tmp_path / "nope.png")
    assert str(tmp_path) not in str(e.value)
    with pytest.raises(ImageError):
        load_image(tmp_path)
    with pytest.raises(ImageError):
        load_image(12345)
    with pytest.raises(ImageError):
        load_image(b"", max_pixels=0)


# --------------------------------------------------------------------------- preprocess


def test_preprocess_no_split_shape_and_range():
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 120, 3), dtype=np.uint8))
    pv, rows, cols = preprocess(img, PreprocessConfig())
    assert pv.shape == (1, 3, 96, 96) and pv.dtype == np.float32 and (rows, cols) == (0, 0)
    assert pv.min() >= -1.0 and pv.max() <= 1.0 and pv.flags["C_CONTIGUOUS"]
    white = preprocess(Image.new("RGB", (10, 10), (255, 255, 255)), PreprocessConfig())[0]
    assert np.allclose(white, 1.0, atol=1e-6)


def test_preprocess_split_is_row_major_with_global_last():
    a = np.zeros((64, 64, 3), np.uint8)  # quadrants: red, green / blue, white
    a[:32, 32:] = (0, 255, 0)
    a[:32, :32] = (255, 0, 0)
    a[32:, :32] = (0, 0, 255)
    a[32:, 32:] = (255, 255, 255)
    cfg = PreprocessConfig(tile_size=32, longest_edge=64, do_split=True, resample="bilinear")
    pv, rows, cols = preprocess(Image.fromarray(a), cfg)
    assert pv.shape == (5, 3, 32, 32) and (rows, cols) == (2, 2)
    expect = [(1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, 1)]
    for k, rgb in enumerate(expect):
        assert np.allclose(pv[k], np.array(rgb, np.float32)[:, None, None], atol=1e-6), k
    assert np.abs(pv[4].mean(axis=(1, 2)) - np.array([0, 0, 0]) ).max() < 0.6  # global mixes all four


def test_preprocess_split_shapes_and_small_image():
    cfg = PreprocessConfig(tile_size=32, longest_edge=96, do_split=True, max_tiles=9)
    pv, rows, cols = preprocess(Image.new("RGB", (300, 100)), cfg)
    assert (rows, cols) == (1, 3) and pv.shape == (4, 3, 32, 32) and pv.dtype == np.float32
    pv, rows, cols = preprocess(Image.new("RGBA", (100, 300)), cfg)
    assert (rows, cols) == (3, 1) and pv.shape == (4, 3, 32, 32)
    fits = PreprocessConfig(tile_size=32, longest_edge=32, do_split=True)
    pv, rows, cols = preprocess(Image.new("RGB", (7, 5)), fits)
    assert (rows, cols) == (0, 0) and pv.shape == (1, 3, 32, 32)


def test_config_validation_and_roundtrip():
    smol = PreprocessConfig(tile_size=512, longest_edge=2048, resample="lanczos", do_split=True)
    d = json.loads(json.dumps(smol.to_dict()))
    assert PreprocessConfig.from_dict(d) == smol
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ConfigError, match="max_tiles"):
        PreprocessConfig(tile_size=512, longest_edge=4096, do_split=True)  # 8 x 8 > 16
    for bad in (dict(tile_size=0), dict(resample="nearest"), dict(std=(0, 1, 1)), dict(max_tiles=1000)):
        with pytest.raises(ConfigError):
            PreprocessConfig(**bad)
    with pytest.raises(ImageError):
        preprocess(np.zeros((4, 4, 3)), PreprocessConfig())


def test_rgba_palette_png_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[2:, :, 3] = 255  # bottom half opaque blue, top half transparent
    Image.fromarray(rgba, "RGBA").quantize(colors=4, method=Image.Quantize.FASTOCTREE).save(tmp_path / "q.png")
    a = np.asarray(load_image(tmp_path / "q.png"))
    assert (a[:2] == 255).all() and (a[2:] == (0, 0, 255)).all()
