"""The ONNX decoder behind the generator's DecodeModel protocol (start / step / reorder)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgevlm.config import TextConfig
from edgevlm.runtime.kv_cache import KVCache
from edgevlm.runtime.sessions import run_bound

# decoder.onnx metadata written by `edgevlm export --attention fused`: past.* and present.* may be one buffer
KV_CACHE_KEY = "edgevlm.kv_cache"


def shares_kv_buffer(session: ort.InferenceSession) -> bool:
    return session.get_modelmeta().custom_metadata_map.get(KV_CACHE_KEY) == "shared"


class OnnxDecoder:
    """One request: prompt embeddings in, logits out, KV cache kept in preallocated buffers."""

    def __init__(self, sessions: dict, cfg: TextConfig, prompt_embeds: np.ndarray, max_len: int):
        self.decoder: ort.InferenceSession = sessions["decoder"]
        self.embed: ort.InferenceSession = sessions["embed_tokens"]
        self.cfg = cfg
        self.prompt_embeds = np.ascontiguousarray(prompt_embeds, dtype=np.float32)  # [1, S, D]
        self.max_len = max_len
        self.cache: KVCache | None = None
        self.pos = 0
        self.logits: np.ndarray | None = None  # [B, V], reused by every run
        self.step_embeds: np.ndarray | None = None  # [B, 1, D], reused by every step
        self.step_ids: np.ndarray | None = None  # [B, 1]
        self.step_positions: np.ndarray | None = None  # [B, 1]
        self.shared_kv = shares_kv_buffer(self.decoder)

    def _run(self, embeds: np.ndarray, positions: np.ndarray, rows: int) -> np.ndarray:
        """One decoder run writing into preallocated buffers. The returned logits view is
        overwritten by the next run (the generator consumes it before stepping again)."""
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("position_ids", positions)
        self.cache.bind(binding, rows)
        logits = self.logits[:rows]  # [rows, V]
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        run_bound(self.decoder, binding)
        self.cache.swap()
        return logits

    def start(self, batch_size: int) -> np.ndarray:
        """Prefill the prompt once (batch 1), then give every row a copy of its cache."""
        cfg = self.cfg
        self.cache = KVCache(cfg.num_layers, batch_size, cfg.num_kv_heads, self.max_len, cfg.head_dim,
                             shared=self.shared_kv)
        self.logits = np.empty((batch_size, cfg.vocab_size), dtype=np.float32)
        self.step_embeds = np.empty((batch_size, 1, cfg.hidden_size), dtype=np.float32)
        self.step_ids = np.empty((batch_size, 1), dtype=np.int64)
        self.step_positions = np.empty((batch_size, 1), dtype=np.int64)
        s = self.prompt_embeds.shape[1]
        positions = np.arange(s, dtype=np.int64)[None]  # [1, S]
        logits = self._run(self.prompt_embeds, positions, rows=1)
        self.cache.replicate_first_row()
        self.pos = s
        self.logits[1:] = logits  # every row starts from the same prompt
        return self.logits

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        if self.pos >= self.max_len:
            raise RuntimeError("KV cache is full")  # the generator's bounds make this unreachable
        self.step_ids[:, 0] = token_ids  # [B, 1]
        binding = self.embed.io_binding()
        binding.bind_cpu_input("input_ids", self.step_ids)
        binding.bind_ortvalue_output("inputs_embeds", ort.OrtValue.ortvalue_from_numpy(self.step_embeds))
        run_bound(self.embed, binding)  # -> step_embeds [B, 1, D]
        self.step_positions[:] = self.pos
        self.pos += 1
        return self._run(self.step_embeds, self.step_positions, rows=self.step_ids.shape[0])

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(np.asarray(rows))
