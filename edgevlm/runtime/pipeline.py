"""Captioning with a bundle: image -> tiles -> vision_encoder -> embed_tokens -> decoder -> text.

Torch-free. Every stage is timed so `edgevlm bench` and `--json` can report it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevlm.bundle import GRAPHS, Bundle, open_bundle
from edgevlm.config import VLMConfig
from edgevlm.errors import BundleError, GenerationError
from edgevlm.image import PreprocessConfig, load_image, preprocess
from edgevlm.prompt import PromptConfig, Prompter
from edgevlm.runtime.decoder import OnnxDecoder
from edgevlm.runtime.generate import GenerationConfig, generate
from edgevlm.runtime.sessions import ORT_ERRORS, RuntimeOptions, check_graphs, open_sessions, ort_message
from edgevlm.runtime.vision_split import SplitVision

# Tiles per vision_encoder run. One 512 px tile is already a 1024-row GEMM, so batching
# tiles buys no throughput, while a whole split image in one run multiplies peak memory.
VISION_CHUNK = 1


@dataclass
class CaptionResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    tiles: int
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Timer:
    def __init__(self):
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round((now - self._t) * 1000, 3)
        self._t = now


class _TimedDecoder:
    """Wraps the DecodeModel to time prefill (start) and each decode step."""

    def __init__(self, inner: OnnxDecoder):
        self.inner, self.prefill_s, self.step_s = inner, 0.0, []

    def start(self, batch_size):
        t = time.perf_counter()
        out = self.inner.start(batch_size)
        self.prefill_s = time.perf_counter() - t
        return out

    def step(self, token_ids):
        t = time.perf_counter()
        out = self.inner.step(token_ids)
        self.step_s.append(time.perf_counter() - t)
        return out

    def reorder(self, rows):
        self.inner.reorder(rows)


class VLM:
    """A loaded bundle, ready to caption. Create with VLM.open(path) or edgevlm.load(path)."""

    def __init__(self, bundle: Bundle, options: RuntimeOptions = RuntimeOptions()):
        t = time.perf_counter()
        m = bundle.manifest
        self.bundle = bundle
        self.config = VLMConfig.from_dict(m["config"])
        self.preprocess_config = PreprocessConfig.from_dict(m["preprocess"])
        self.prompter = Prompter.from_file(bundle.file("tokenizer.json"), PromptConfig.from_dict(m["prompt"]))
        self.generation = GenerationConfig.from_dict(m["generation"])
        self.sessions = open_sessions(bundle, options)
        check_graphs(self.sessions, self.config, self.preprocess_config.tile_size,
                     {g: bundle.graph_path(g, options.model_format).name for g in GRAPHS})
        self.options = options
        self.load_ms = (time.perf_counter() - t) * 1000

    @classmethod
    def open(cls, path=None, threads: int = 0, verify: bool = True, **options) -> "VLM":
        return cls(open_bundle(path, verify=verify), RuntimeOptions(threads=threads, **options))

    def generation_config(self, **overrides) -> GenerationConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        cfg = dataclasses.replace(self.generation, **overrides)
        cfg.validate()
        return cfg

    def caption(self, image, prompt: str | None = None, **kwargs) -> str:
        return self.run(image, prompt, **kwargs).text

    def run(self, image, prompt: str | None = None, *, split: bool | None = None, on_token=None,
            timeout: float | None = None, **generation) -> CaptionResult:
        """Caption one image (path, bytes or PIL image). generation: GenerationConfig fields."""
        deadline = time.monotonic() + timeout if timeout else None
        gen = self.generation_config(**generation)
        timer = _Timer()
        pre = self.preprocess_config
        if split is not None and split != pre.do_split:
            pre = dataclasses.replace(pre, do_split=split)
        pixels, rows, cols = preprocess(load_image(image), pre)  # [tiles, 3, H, W]
        ids = self.prompter.encode(prompt, rows, cols)
        limit = self.config.text.max_position_embeddings
        if len(ids) + gen.max_new_tokens > limit:
            raise GenerationError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({gen.max_new_tokens}) exceeds the model's "
                f"context of {limit} tokens; shorten the prompt, lower --max-new-tokens or use --no-split")
        timer.lap("preprocess")
        try:  # a graph that loaded but fails to run (a corrupt weight or attribute) is the bundle's fault
            image_embeds = self.encode_tiles(pixels)  # [tiles, T_img, D]
            timer.lap("vision_encode")
            embeds = self.embed_prompt(np.asarray(ids, dtype=np.int64), image_embeds)
            timer.lap("embed")
            decoder = _TimedDecoder(OnnxDecoder(self.sessions, self.config.text, embeds, len(ids) + gen.max_new_tokens))
            new_ids = generate(decoder, gen, prompt_ids=ids, on_token=on_token, deadline=deadline)
        except ORT_ERRORS as exc:
            raise BundleError(f"the model failed while running: {ort_message(exc, self.bundle.path)}; "
                              f"the bundle may be corrupt") from None
        timer.lap("generate")
        text = self.prompter.decode(new_ids)
        timer.ms["prefill"] = round(decoder.prefill_s * 1000, 3)
        steps = decoder.step_s
        timer.ms["decode_per_token"] = round(float(np.median(steps)) * 1000, 3) if steps else 0.0
        timer.ms["total"] = round(sum(timer.ms[k] for k in ("preprocess", "vision_encode", "embed", "generate")), 3)
        return CaptionResult(text=text, token_ids=new_ids, prompt_tokens=len(ids), tiles=int(pixels.shape[0]),
                             timings_ms=timer.ms)

    def encode_tiles(self, pixels: np.ndarray) -> np.ndarray:
        """pixels [tiles, 3, H, W] -> image embeddings [tiles, T_img, D], VISION_CHUNK tiles per
        run: a split 512 px image has up to 17 tiles, and one 17-tile run holds every tile's
        attention activations at once (5.9 GB peak RSS on SmolVLM-256M); chunks bound it."""
        session = self.sessions["vision_encoder"]
        parts = [session.run(None, {"pixel_values": pixels[i:i + VISION_CHUNK]})[0]
                 for i in range(0, pixels.shape[0], VISION_CHUNK)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def embed_prompt(self, ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """ids [S] -> inputs_embeds [1, S, D] with image-token rows replaced, in order, by
        the rows of image_embeds [tiles, T_img, D]."""
        (embeds,) = self.sessions["embed_tokens"].run(None, {"input_ids": ids[None]})  # [1, S, D]
        slots = np.flatnonzero(ids == self.prompter.image_token_id)
        flat = image_embeds.reshape(-1, image_embeds.shape[-1])  # [tiles * T_img, D]
        if len(slots) != flat.shape[0]:
            raise GenerationError(f"prompt has {len(slots)} image tokens but the image gives {flat.shape[0]} embeddings")
        embeds[0, slots] = flat
        return embeds

    @property
    def vision_attention(self) -> str:
        """Which code runs the vision tower's attention: "bf16 kernel (edgevlm)" (with ", int8 layer
        kernel" where the rest of each layer runs on it too) or "onnxruntime"."""
        vision = self.sessions["vision_encoder"]
        if not isinstance(vision, SplitVision):
            return "onnxruntime"
        return "bf16 kernel (edgevlm)" + (", int8 layer kernel" if vision.mlp_stages else "")

    @property
    def path(self) -> Path:
        return self.bundle.path
