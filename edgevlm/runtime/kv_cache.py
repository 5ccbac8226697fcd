"""Preallocated KV buffers for one request, bound to the decoder graph with IOBinding.

Default graphs: two complete buffer sets are allocated once per request and used ping-pong:
each decoder run reads set `current` (past.*) and writes the other set (present.*), then they
swap. No buffer is allocated per token, and no graph input ever aliases a graph output.

Shared graphs (GroupQueryAttention, edgevlm.kernels.gqa): one set, each layer's buffer bound
as both past.* and present.*; ONNX Runtime writes only the new tokens' slots in place.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class KVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 shared: bool = False):
        # [set, layer, k|v, B, KVH, T, hd]: every [s, l, kv] (and its first-rows slice) is contiguous,
        # so OrtValues can wrap the memory without a copy. One set when past and present are shared.
        self.shared = shared
        self.data = np.zeros((1 if shared else 2, num_layers, 2, batch, kv_heads, max_len, head_dim), dtype=np.float32)
        self.num_layers = num_layers
        self.batch = batch
        self.max_len = max_len
        self.current = 0

    def _values(self, which: int, rows: int):
        return [ort.OrtValue.ortvalue_from_numpy(self.data[which, layer, kv, :rows])
                for layer in range(self.num_layers) for kv in range(2)]

    def bind(self, binding: ort.IOBinding, rows: int) -> None:
        """Bind past.* to the current set and present.* to the other (shared: the same OrtValue
        as both), for the first `rows` rows."""
        names = [f"{i}.{kv}" for i in range(self.num_layers) for kv in "kv"]
        past = self._values(self.current, rows)
        present = past if self.shared else self._values(1 - self.current, rows)
        for name, value in zip(names, past):
            binding.bind_ortvalue_input(f"past.{name}", value)
        for name, value in zip(names, present):
            binding.bind_ortvalue_output(f"present.{name}", value)

    def swap(self) -> None:
        if not self.shared:
            self.current = 1 - self.current

    def replicate_first_row(self) -> None:
        """After a batch-1 prefill: copy row 0 of the current set into every row."""
        cur = self.data[self.current]  # [layer, k|v, B, KVH, T, hd]
        cur[:, :, 1:] = cur[:, :, :1]

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row i becomes old row rows[i]."""
        cur = self.data[self.current]
        cur[...] = cur[:, :, rows]
