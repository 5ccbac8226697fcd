"""The ONNX decoder behind the generator's DecodeModel protocol (start / step / reorder)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgevlm.config import TextConfig
from edgevlm.runtime.kv_cache import KVCache


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

    def _run(self, embeds: np.ndarray, positions: np.ndarray, rows: int) -> np.ndarray:
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("inputs_embeds", embeds)
        binding.bind_cpu_input("position_ids", positions)
        self.cache.bind(binding, rows)
        logits = np.empty((rows, self.cfg.vocab_size), dtype=np.float32)  # [B, V]
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self.decoder.run_with_iobinding(binding)
        self.cache.swap()
        return logits

    def start(self, batch_size: int) -> np.ndarray:
        """Prefill the prompt once (batch 1), then give every row a copy of its cache."""
        cfg = self.cfg
        self.cache = KVCache(cfg.num_layers, batch_size, cfg.num_kv_heads, self.max_len, cfg.head_dim)
        s = self.prompt_embeds.shape[1]
        positions = np.arange(s, dtype=np.int64)[None]  # [1, S]
        logits = self._run(self.prompt_embeds, positions, rows=1)
        self.cache.replicate_first_row()
        self.pos = s
        return np.repeat(logits, batch_size, axis=0)  # [B, V]

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        if self.pos >= self.max_len:
            raise RuntimeError("KV cache is full")  # the generator's bounds make this unreachable
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)  # [B, 1]
        (embeds,) = self.embed.run(None, {"input_ids": ids})  # [B, 1, D]
        positions = np.full_like(ids, self.pos)  # [B, 1]
        self.pos += 1
        return self._run(embeds, positions, rows=ids.shape[0])

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(np.asarray(rows))
