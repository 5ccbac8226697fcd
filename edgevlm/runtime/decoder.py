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
    """One request: prompt embeddings in, logits out, KV cache kept in preallocated buffers.

    Decode steps reuse their IOBindings: every buffer a step reads or writes (token ids, step
    embeddings, positions, KV set, logits) is allocated once per request and updated in place,
    so the bindings built for the first step stay valid (two for ping-pong KV sets). Rebuilding
    them (60 KV OrtValues and 120 binds for a 30-layer decoder) cost ~0.2 ms a token."""

    REUSE_BINDINGS = True  # False: a fresh binding per step (the reference path, for tests)

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
        self._step_bindings: dict = {}  # (KV set, rows) -> decoder IOBinding of a decode step
        self._embed_binding: ort.IOBinding | None = None  # step_ids -> step_embeds

    def _bind(self, embeds: np.ndarray, positions: np.ndarray, rows: int) -> ort.IOBinding:
        binding = self.decoder.io_binding()
        # OrtValues wrap the arrays' memory (no copy), so in-place updates reach a reused binding
        binding.bind_ortvalue_input("inputs_embeds", ort.OrtValue.ortvalue_from_numpy(embeds))
        binding.bind_ortvalue_input("position_ids", ort.OrtValue.ortvalue_from_numpy(positions))
        self.cache.bind(binding, rows)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits[:rows]))
        return binding

    def _run(self, embeds: np.ndarray, positions: np.ndarray, rows: int, reuse: bool = False) -> np.ndarray:
        """One decoder run writing into preallocated buffers. The returned logits view is
        overwritten by the next run (the generator consumes it before stepping again).
        reuse: the step buffers are bound; keep the binding for the next step."""
        if reuse and self.REUSE_BINDINGS:
            key = (self.cache.current, rows)
            binding = self._step_bindings.get(key)
            if binding is None:
                binding = self._step_bindings[key] = self._bind(embeds, positions, rows)
        else:
            binding = self._bind(embeds, positions, rows)
        run_bound(self.decoder, binding)
        self.cache.swap()
        return self.logits[:rows]  # [rows, V]

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
        binding = self._embed_binding if self.REUSE_BINDINGS else None
        if binding is None:
            binding = self._embed_binding = self.embed.io_binding()
            binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self.step_ids))
            binding.bind_ortvalue_output("inputs_embeds", ort.OrtValue.ortvalue_from_numpy(self.step_embeds))
        run_bound(self.embed, binding)  # -> step_embeds [B, 1, D]
        self.step_positions[:] = self.pos
        self.pos += 1
        return self._run(self.step_embeds, self.step_positions, rows=self.step_ids.shape[0], reuse=True)

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(np.asarray(rows))
