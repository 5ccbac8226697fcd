"""PyTorch eager, the baseline: transformers LlamaForCausalLM fp32 for the decoder, and the
Idefics3 vision tower + connector of the same random checkpoint for one vision tile.

Eager means no torch.compile; attention is transformers' default (sdpa). The decode loop is
written out (one forward per token with a DynamicCache) instead of calling generate(), so
prefill and decode are timed apart, with the same definition as every other peer:
prefill = prompt ids in -> first new token chosen; decode = each later token.
"""

from __future__ import annotations

import inspect
import time

from peers_util import missing_modules, random_pixels, versions as _versions

TITLE = "PyTorch eager (transformers)"
VARIANTS = {"full": ("fp32",), "smoke": ("fp32",)}


def missing(spec: dict) -> str | None:
    return missing_modules("torch", "transformers", hint="pip install torch==2.13.0 transformers")


def versions() -> dict:
    return _versions("torch", "transformers")


def prepare(spec: dict, variant: str, out) -> dict:
    return {"command": "none: from_pretrained(LLAMA_DIR) and from_pretrained(VLM_DIR), fp32"}


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import torch
        from transformers import AutoModelForImageTextToText, DynamicCache, LlamaForCausalLM

        torch.set_num_threads(spec["threads"])
        self.torch, self.spec, self.cache_cls = torch, spec, DynamicCache
        self.lm = LlamaForCausalLM.from_pretrained(spec["llama_dir"], dtype=torch.float32).eval()
        # transformers renamed past_key_values -> cache (5.x); pass the cache under the name this version takes
        self.cache_arg = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        vlm = AutoModelForImageTextToText.from_pretrained(spec["vlm_dir"], dtype=torch.float32).eval()
        vlm.model.text_model = None  # only the vision tower and connector are timed: free the decoder copy
        vlm.lm_head = None
        self.vlm = vlm
        self.pixels = torch.from_numpy(random_pixels(spec["tile_size"]))[None]  # [1, tiles=1, 3, H, W]
        self.ids = torch.tensor([spec["prompt_ids"]], dtype=torch.long)  # [1, P]
        self.info = {"attention": self.lm.config._attn_implementation}

    def _step(self, ids, cache):
        out = self.lm(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
        return out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1] greedy

    def run(self) -> dict:
        torch, n = self.torch, self.spec["new_tokens"]
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.vlm.model.get_image_features(pixel_values=self.pixels)  # vision tower + connector
            t1 = time.perf_counter()
            cache = self.cache_cls(config=self.lm.config)
            token = self._step(self.ids, cache)  # prefill: the whole prompt, first token
            t2 = time.perf_counter()
            tokens = [token]
            for _ in range(n - 1):
                token = self._step(token, cache)
                tokens.append(token)
            t3 = time.perf_counter()
        return {"prefill_ms": 1e3 * (t2 - t1), "decode_ms_per_token": 1e3 * (t3 - t2) / max(n - 1, 1),
                "vision_ms_per_tile": 1e3 * (t1 - t0), "tokens": len(tokens)}
