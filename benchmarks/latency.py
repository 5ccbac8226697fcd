"""Per-stage caption latency of a bundle: medians (and min-max) of repeated runs.

Warm-up runs are not counted; the thread count is pinned; generation is greedy and forced to
exactly `new_tokens` tokens (EOS ignored) so every run does the same work.

The stages are timed here rather than through VLM.run so the bench controls the prompt length
(`prompt_tokens`) and can time the first token (TTFT) on its own; the calls are the runtime's
(load_image, preprocess, the three sessions, OnnxDecoder), so the work is the same.
"""

from __future__ import annotations

import dataclasses
import io
import resource
import statistics
import time
from pathlib import Path

import numpy as np

# preprocess: image decode + resize/tile/normalise + prompt ids. ttft: start of a run until the
# first token is chosen. decode_per_token: mean of the run's decode steps. total: the whole run.
STAGES = ("preprocess", "vision_encode", "vision_encode_per_tile", "embed", "prefill", "ttft",
          "decode_per_token", "total")
RATES = ("prefill_tokens_per_s", "decode_tokens_per_s")
MAX_IMAGE_SIZE = 4096  # a synthetic image side; larger ones only test the image size cap
MAX_LOADS = 3  # loading is timed this many times at most: a large bundle takes seconds per load


def summarize(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def synthetic_image(size: int) -> bytes:
    """A deterministic size x size RGB PNG (gradient plus seeded noise): decoding it each run times
    image decode too, and the noise keeps PNG from compressing it to nothing."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    noise = np.random.default_rng(0).integers(0, 64, (size, size, 3))  # [H, W, 3]
    pixels = (ramp[None, :, None] * 0.75 + noise).clip(0, 255).astype(np.uint8)  # [H, W, 3]
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def pad_prompt(ids: list[int], prompter, text_tokens: int | None) -> list[int]:
    """Prepend filler tokens so `ids` holds about `text_tokens` non-image tokens (a template's own
    tokens are never removed, so a smaller request leaves ids as they are). Prepending keeps the
    image block next to the template's instruction tokens; the filler word is the token of "a"."""
    have = len(ids) - ids.count(prompter.image_token_id)
    if text_tokens is None or have >= text_tokens:
        return ids
    word = [i for i in prompter.tokenizer.encode("a", add_special_tokens=False).ids if i != prompter.image_token_id]
    filler = word[-1] if word else ids[-1]
    return [filler] * (text_tokens - have) + ids


def _prepare(vlm, source, split, text_tokens, new_tokens):
    """-> (pixels [tiles, 3, H, W], prompt ids); the bench's preprocess stage."""
    from edgevlm.errors import ConfigError
    from edgevlm.image import load_image, preprocess

    pre = vlm.preprocess_config
    if split is not None and split != pre.do_split:
        pre = dataclasses.replace(pre, do_split=split)
    pixels, rows, cols = preprocess(load_image(source), pre)
    ids = pad_prompt(vlm.prompter.encode(None, rows, cols), vlm.prompter, text_tokens)
    limit = vlm.config.text.max_position_embeddings
    if len(ids) + new_tokens > limit:
        raise ConfigError(f"prompt ({len(ids)} tokens) + --new-tokens ({new_tokens}) exceeds the model's context of "
                          f"{limit} tokens; lower --prompt-tokens or --new-tokens, or use --no-split")
    return pixels, ids


def timed_run(vlm, source, split=None, text_tokens=None, new_tokens=16) -> dict:
    """One caption, stage by stage, in ms; plus the token counts the rates need."""
    from edgevlm.errors import BundleError
    from edgevlm.runtime.decoder import OnnxDecoder
    from edgevlm.runtime.sessions import ORT_ERRORS, ort_message

    start = time.perf_counter()
    ms = {}
    pixels, ids = _prepare(vlm, source, split, text_tokens, new_tokens)
    ms["preprocess"] = time.perf_counter() - start
    try:  # as in VLM.run: a graph that loads but fails to run is the bundle's fault
        t = time.perf_counter()
        (image_embeds,) = vlm.sessions["vision_encoder"].run(None, {"pixel_values": pixels})  # [tiles, T_img, D]
        ms["vision_encode"] = time.perf_counter() - t
        t = time.perf_counter()
        embeds = vlm.embed_prompt(np.asarray(ids, dtype=np.int64), image_embeds)  # [1, S, D]
        ms["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        decoder = OnnxDecoder(vlm.sessions, vlm.config.text, embeds, len(ids) + new_tokens)
        token = int(np.argmax(decoder.start(1)[0]))  # greedy: ties go to the lowest id
        now = time.perf_counter()
        ms["prefill"], ms["ttft"] = now - t, now - start
        for _ in range(new_tokens - 1):  # the first token came from prefill
            token = int(np.argmax(decoder.step(np.array([token], dtype=np.int64))[0]))
    except ORT_ERRORS as exc:
        raise BundleError(f"the model failed while running: {ort_message(exc, vlm.bundle.path)}; "
                          f"the bundle may be corrupt") from None
    end = time.perf_counter()
    ms["decode_per_token"] = (end - start - ms["ttft"]) / max(new_tokens - 1, 1)
    ms["total"] = end - start
    ms["vision_encode_per_tile"] = ms["vision_encode"] / pixels.shape[0]
    ms = {k: v * 1000 for k, v in ms.items()}
    ms["prefill_tokens_per_s"] = len(ids) / ms["prefill"] * 1000
    ms["decode_tokens_per_s"] = 1000 / ms["decode_per_token"]
    counts = {"tiles": int(pixels.shape[0]), "prompt_tokens": len(ids),
              "image_tokens": ids.count(vlm.prompter.image_token_id)}
    return {"ms": ms, **counts}


def check_options(repeat, warmup, new_tokens, image_size, prompt_tokens, threads=1) -> None:
    """ConfigError (one line, exit 2 on the CLI) before any work, naming the CLI option."""
    from edgevlm.errors import ConfigError
    from edgevlm.runtime.generate import MAX_NEW_TOKENS_CAP

    def fail(option, value, rule):
        raise ConfigError(f"{option} {value} is invalid: {rule}")

    if repeat < 1:
        fail("--repeat", repeat, "must be >= 1")
    if warmup < 0:
        fail("--warmup", warmup, "must be >= 0")
    if threads < 1:
        fail("--threads", threads, "must be >= 1")
    if not 2 <= new_tokens <= MAX_NEW_TOKENS_CAP:  # token 1 comes from prefill: decode needs a second
        fail("--new-tokens", new_tokens, f"must be in 2..{MAX_NEW_TOKENS_CAP}")
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        fail("--image-size", image_size, f"must be in 1..{MAX_IMAGE_SIZE} pixels")
    if prompt_tokens is not None and prompt_tokens < 0:
        fail("--prompt-tokens", prompt_tokens, "must be >= 0")


def image_source(image: Path | None, image_size: int | None):
    """-> (what load_image reads, a label for the report: never a full path)."""
    import edgevlm

    if image_size is not None:
        return synthetic_image(image_size), f"synthetic {image_size}x{image_size}"
    if image is None:
        image = sorted((Path(edgevlm.__file__).parent / "assets" / "samples").glob("*.png"))[0]
    return image, Path(image).name


def bench_bundle(bundle=None, image=None, threads: int = 2, repeat: int = 10, warmup: int = 2,
                 new_tokens: int = 16, split: bool | None = None, image_size: int | None = None,
                 prompt_tokens: int | None = None, model_format: str = "onnx", vision_attention: str = "auto") -> dict:
    """model_format: "onnx" or "ort". (The roofline is placed by the caller, after every timed
    setting, so its buffers do not count in this setting's peak RSS: see edgevlm bench.)"""
    import edgevlm

    check_options(repeat, warmup, new_tokens, image_size, prompt_tokens, threads)

    loads, vlm = [], None
    for _ in range(min(repeat, MAX_LOADS)):
        vlm = None  # let the previous copy go first, so peak RSS is that of one loaded bundle
        t = time.perf_counter()
        # includes the sha256 check of every file
        vlm = edgevlm.load(bundle, threads=threads, model_format=model_format, vision_attention=vision_attention)
        loads.append((time.perf_counter() - t) * 1000)
    source, label = image_source(image, image_size)
    runs = []
    for i in range(warmup + repeat):
        run = timed_run(vlm, source, split, prompt_tokens, new_tokens)
        if i >= warmup:
            runs.append(run["ms"])
    size = sum(p.stat().st_size for p in vlm.bundle.path.iterdir() if p.is_file())
    s = run["prompt_tokens"]
    result = {
        "bundle": vlm.bundle.path.name,
        "architecture": vlm.bundle.manifest["architecture"],
        "precision": sorted({g["precision"] for g in vlm.bundle.manifest["graphs"].values()}),
        "model_format": model_format, "vision_attention": vlm.vision_attention, "threads": threads, "repeat": repeat, "warmup": warmup, "new_tokens": new_tokens,
        "image": label, "tiles": run["tiles"], "prompt_tokens": s,
        "image_tokens": run["image_tokens"], "text_tokens": s - run["image_tokens"],
        # KV positions already filled when the first and the last decode step run
        "decode_context": {"first": s, "last": s + max(new_tokens - 2, 0)},
        "load_ms": summarize(loads), "load_runs": len(loads),
        "bundle_mb": round(size / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stages_ms": {name: summarize([r[name] for r in runs]) for name in STAGES},
        **{name: summarize([r[name] for r in runs]) for name in RATES},
    }
    return result
