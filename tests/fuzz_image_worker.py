"""Image fuzzing helpers: valid seed files of every allowed format, byte-level mutators, bomb
files, and a worker that runs many mutants in its own process (a native crash kills only it).

    python -m tests.fuzz_image_worker mutants --cases N --seed S     # JSON summary on stdout
    python -m tests.fuzz_image_worker bombs DIR                      # JSON: per-bomb time, peak RSS
"""

from __future__ import annotations

import io
import json
import random
import resource
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FUZZ_MAX_PIXELS = 1 << 20  # mutants may claim big sizes; a 1 MP cap keeps each case cheap
EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def _save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files covering the allowed formats and their odd modes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    frames = [Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)) for _ in range(3)]
    ramp = Image.fromarray((np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 170))
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = rgb.convert("P")
    return {
        "png_rgb": _save(rgb, "PNG"),
        "png_palette_transparency": _save(pal, "PNG", transparency=3),
        "png_la": _save(rgb.convert("LA"), "PNG"),
        "png_16bit": _save(ramp, "PNG"),
        "jpeg_baseline": _save(rgb, "JPEG", quality=80),
        "jpeg_progressive": _save(rgb, "JPEG", progressive=True),
        "jpeg_cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg_gray_exif": _save(rgb.convert("L"), "JPEG", exif=exif),
        "gif_animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "gif_transparent": _save(pal, "GIF", transparency=0),
        "webp_lossy": _save(rgb, "WEBP", quality=70),
        "webp_lossless": _save(rgb.convert("RGBA"), "WEBP", lossless=True),
        "webp_animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "bmp_rgb": _save(rgb, "BMP"),
        "bmp_palette": _save(pal, "BMP"),
        "tiff_deflate": _save(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_lzw_multipage": _save(frames[0], "TIFF", compression="tiff_lzw", save_all=True,
                                    append_images=frames[1:]),
        "tiff_16bit": _save(ramp, "TIFF"),
    }


def random_edits(rng: random.Random) -> list[tuple]:
    """One to four (op, where 0..1, number, payload) edits for `apply_edits`."""
    return [(rng.randrange(7), rng.random() ** 3 if rng.random() < 0.6 else rng.random(),  # ** 3: near the header
             rng.getrandbits(32), bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))))
            for _ in range(rng.randint(1, 4))]


def apply_edits(data: bytes, edits, donors: list[bytes]) -> bytes:
    """Byte-level edits: flip a bit, set a byte, write an extreme 1/2/4-byte integer (either byte
    order), delete a run, insert bytes, truncate, splice in a piece of another valid file."""
    out = bytearray(data)
    for op, where, number, payload in edits:
        if not out:
            break
        pos = min(int(where * len(out)), len(out) - 1)
        if op == 0:
            out[pos] ^= 1 << (number % 8)
        elif op == 1:
            out[pos] = number % 256
        elif op == 2:
            width = (1, 2, 4)[number % 3]
            value = EXTREMES[number % len(EXTREMES)] & ((1 << (8 * width)) - 1)
            out[pos:pos + width] = value.to_bytes(width, "little" if number & 8 else "big")
        elif op == 3:
            del out[pos:pos + 1 + number % 64]
        elif op == 4:
            out[pos:pos] = payload
        elif op == 5:
            del out[pos:]
        else:
            donor = donors[number % len(donors)]
            start = (number >> 8) % len(donor)
            out[pos:pos + len(payload)] = donor[start:start + len(payload)]
    return bytes(out)


def check_one(data: bytes, max_pixels: int = FUZZ_MAX_PIXELS) -> str:
    """'ok' or 'image_error'; raises anything else (the fuzz finding). Warnings are errors too:
    on the command line they would print extra lines."""
    from edgevlm.errors import ImageError
    from edgevlm.image import PreprocessConfig, load_image, preprocess

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            im = load_image(data, max_pixels=max_pixels)
        except ImageError as exc:
            message = str(exc)
            if "\n" in message or not message:
                raise AssertionError(f"ImageError message is not one line: {message!r}") from None
            return "image_error"
        assert im.mode == "RGB" and im.width * im.height <= max_pixels, (im.mode, im.size)
        pixels, _, _ = preprocess(im, PreprocessConfig(tile_size=32, longest_edge=32))
        assert pixels.shape == (1, 3, 32, 32) and np.isfinite(pixels).all()
    return "ok"


# --------------------------------------------------------------------------- bombs


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes, mode: int = 0, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def bomb_files() -> dict[str, bytes]:
    """Files that claim (or really hold) far more pixels or text than their size suggests."""
    def zeros(width, height):  # the IDAT of an all-black greyscale image: ~1 KB per MP
        comp, row = zlib.compressobj(9), b"\x00" * (width + 1)
        return b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    tiny_idat = zlib.compress(b"\x00\x00")
    text_bomb = _png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    jpeg = bytearray(_save(Image.new("RGB", (8, 8)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg_64mp = bytearray(jpeg)
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    jpeg_64mp[sof + 5:sof + 9] = struct.pack(">HH", 8000, 8000)
    gif = bytearray(_save(Image.new("P", (1, 1)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    frame = gif.index(b"\x2c")
    gif[frame + 5:frame + 9] = struct.pack("<HH", 65535, 65535)  # the frame itself
    webp = _save(Image.new("RGB", (1, 1)), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    webp_bomb = b"RIFF" + struct.pack("<I", 4 + len(vp8x) + len(webp) - 12) + b"WEBP" + vp8x + webp[12:]
    tiff = bytearray(_save(Image.new("L", (1, 1)), "TIFF"))
    _set_tiff_dims(tiff, 100_000, 100_000)
    bmp = bytearray(_save(Image.new("RGB", (1, 1)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 30000, 30000)
    return {
        # three tiers: over our 40 MP cap only; over Pillow's warning (89 MP); over its error (179 MP)
        "png_real_49mp": _png(7000, 7000, zeros(7000, 7000)),
        "png_real_144mp": _png(12000, 12000, zeros(12000, 12000)),
        "png_header_64mp": _png(8000, 8000, tiny_idat),
        "png_header_100mp": _png(10000, 10000, tiny_idat),
        "png_header_10gp": _png(100_000, 100_000, tiny_idat),
        "jpeg_sof_64mp": bytes(jpeg_64mp),
        "png_ztxt_64mb": _png(1, 1, tiny_idat, extra=text_bomb),
        "jpeg_sof_4gp": bytes(jpeg),
        "gif_screen_4gp": bytes(gif),
        "webp_vp8x_268mp": webp_bomb,
        "tiff_header_10gp": bytes(tiff),
        "bmp_header_900mp": bytes(bmp),
    }


def _set_tiff_dims(tiff: bytearray, width: int, height: int) -> None:
    """Rewrite ImageWidth (256) / ImageLength (257) in the first IFD of a little-endian TIFF."""
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", tiff, entry)
        if tag in (256, 257):
            struct.pack_into("<HHII", tiff, entry, tag, 4, 1, width if tag == 256 else height)  # LONG


def run_bombs(directory: Path) -> dict:
    """Load every bomb file with the default cap; report outcome, seconds, and peak RSS growth."""
    from edgevlm.errors import ImageError
    from edgevlm.image import load_image

    directory.mkdir(parents=True, exist_ok=True)
    files = bomb_files()
    for name, data in files.items():
        (directory / f"{name}.bin").write_bytes(data)
    load_image(_save(Image.new("RGB", (64, 64)), "PNG"))  # warm up the decoders
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for name in files:
        t = time.perf_counter()
        try:
            load_image(directory / f"{name}.bin")
            outcome = "LOADED"
        except ImageError as exc:
            outcome = str(exc)
        results[name] = {"outcome": outcome, "seconds": round(time.perf_counter() - t, 4),
                         "bytes": len(files[name])}
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # ru_maxrss is KiB
    return {"bombs": results, "peak_rss_growth_mb": round(peak_growth_mb, 1)}


def run_mutants(cases: int, seed: int, progress: Path | None = None) -> dict:
    rng = random.Random(seed)
    seeds = seed_files()
    names = sorted(seeds)
    outcomes, failures = {}, []
    log = open(progress, "w") if progress else None
    for case in range(cases):
        name = rng.choice(names)
        data = apply_edits(seeds[name], random_edits(rng), [seeds[n] for n in names])
        if log:
            log.write(f"{case} {name}\n")
            log.flush()
        try:
            outcome = check_one(data)
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            outcome = "UNCAUGHT"
            failures.append({"case": case, "seed_file": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        outcomes[f"{name}:{outcome}"] = outcomes.get(f"{name}:{outcome}", 0) + 1
    return {"cases": cases, "outcomes": dict(sorted(outcomes.items())), "uncaught": failures[:20],
            "uncaught_count": len(failures)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[0] == "bombs":
        print(json.dumps(run_bombs(Path(argv[1]))))
    else:
        cases = int(argv[argv.index("--cases") + 1])
        seed = int(argv[argv.index("--seed") + 1])
        progress = Path(argv[argv.index("--progress") + 1]) if "--progress" in argv else None
        print(json.dumps(run_mutants(cases, seed, progress)))


if __name__ == "__main__":
    main()
