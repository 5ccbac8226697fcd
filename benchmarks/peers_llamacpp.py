"""llama.cpp through llama-cpp-python: the Llama checkpoint dir converted to GGUF by llama.cpp's
own convert_hf_to_gguf.py, quantized by the library's llama_model_quantize, timed with
Llama.eval (decoder only: its mtmd vision tower needs a build with that tool).

Not exercised on the machine this was written on: llama-cpp-python builds llama.cpp from source
(~7 min on 2 cores), and its wheel ships no converter; point peers.py at one with
--llama-convert PATH/convert_hf_to_gguf.py (from a llama.cpp source tree). Known risk: the
converter refuses a BPE tokenizer whose pre-tokenizer hash it does not know, and the random
fixture's tokenizer is such a one; the failure is then this peer's skip reason.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from peers_util import missing_modules, run_tool, shown, versions as _versions

TITLE = "llama.cpp (llama-cpp-python)"
VARIANTS = {"full": ("q4_0", "q8_0"), "smoke": ("q8_0",)}


def _converter(spec: dict) -> Path | None:
    found = spec.get("llama_convert") or shutil.which("convert_hf_to_gguf.py")
    if not found:
        try:  # a source install of llama-cpp-python keeps the llama.cpp tree beside the package
            import llama_cpp

            found = Path(llama_cpp.__file__).parent.parent / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        except ImportError:
            return None
    return Path(found) if Path(found).is_file() else None


def missing(spec: dict) -> str | None:
    why = missing_modules("llama_cpp", hint="pip install llama-cpp-python builds llama.cpp from source, "
                                            "~7 min on 2 cores")
    why = why or missing_modules("gguf", "torch", "transformers", hint="the GGUF converter needs them")
    if why is None and _converter(spec) is None:
        why = "no convert_hf_to_gguf.py (llama.cpp source tree): pass peers.py --llama-convert PATH"
    return why


def versions() -> dict:
    return _versions("llama-cpp-python", "gguf", "transformers", "torch")


def prepare(spec: dict, variant: str, out) -> dict:
    """q8_0 straight from the converter; q4_0 (which it cannot write) from an f16 GGUF through
    llama.cpp's quantizer, the library function behind its llama-quantize tool."""
    import ctypes

    import llama_cpp

    target = out / f"model-{variant}.gguf"
    first = target if variant == "q8_0" else out / "model-f16.gguf"
    cmd = [sys.executable, _converter(spec), spec["llama_dir"], "--outfile", first,
           "--outtype", "q8_0" if variant == "q8_0" else "f16"]
    command = shown(run_tool(cmd, "convert_hf_to_gguf.py"), spec)
    if variant != "q8_0":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{variant.upper()}")
        params.nthread = spec["threads"]
        if llama_cpp.llama_model_quantize(str(first).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize to {variant} failed")
        command += f" && llama_model_quantize(f16 -> {variant})"
    return {"command": command, "artifact_mb": round(target.stat().st_size / 1e6, 1)}


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import numpy as np
        from llama_cpp import Llama

        self.np, self.spec = np, spec
        p, n = len(spec["prompt_ids"]), spec["new_tokens"]
        self.llm = Llama(model_path=str(art / f"model-{variant}.gguf"), n_ctx=p + n + 8, n_batch=max(p, 32),
                         n_threads=spec["threads"], n_threads_batch=spec["threads"], verbose=False)

    def _next(self) -> int:
        return int(self.np.argmax(self.llm.scores[self.llm.n_tokens - 1]))  # last row: logits of the last token

    def run(self) -> dict:
        llm, n = self.llm, self.spec["new_tokens"]
        t1 = time.perf_counter()
        llm.reset()  # position 0; eval drops every cached position from there on
        llm.eval(self.spec["prompt_ids"])  # prefill in one batch
        token = self._next()
        t2 = time.perf_counter()
        tokens = [token]
        for _ in range(n - 1):
            llm.eval([token])
            token = self._next()
            tokens.append(token)
        t3 = time.perf_counter()
        return {"prefill_ms": 1e3 * (t2 - t1), "decode_ms_per_token": 1e3 * (t3 - t2) / max(n - 1, 1),
                "tokens": len(tokens)}
