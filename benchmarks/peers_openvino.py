"""OpenVINO GenAI: optimum-intel exports the Llama checkpoint dir to OpenVINO IR (weights
compressed by NNCF), and openvino_genai.LLMPipeline runs it (decoder only here: its VLMPipeline
does not accept smolvlm).

The pipeline is built with ATTENTION_BACKEND=SDPA, the stateful pipeline: the default paged-
attention backend caches prompt prefixes, so the same prompt repeated would time a cache hit,
not a prefill. Prefill and decode come from the pipeline's own perf metrics (time to first token,
time per later output token); the wall time of the whole generate() is kept as a cross-check.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from peers_util import missing_modules, run_tool, shown, versions as _versions

TITLE = "OpenVINO GenAI"
VARIANTS = {"full": ("int4", "int8"), "smoke": ("int8",)}
# group 32 like edgevlm's and ORT GenAI's int4 blocks; ratio 1.0: every decoder MatMul in int4
WEIGHTS = {"int4": ["--weight-format", "int4", "--group-size", "32", "--ratio", "1.0", "--sym"],
           "int8": ["--weight-format", "int8"], "fp32": ["--weight-format", "fp32"]}


def missing(spec: dict) -> str | None:
    return missing_modules("openvino_genai", "openvino_tokenizers", "optimum.intel", "nncf",
                           hint="pip install openvino-genai nncf; pip install --no-deps optimum-intel optimum "
                                "(its torchvision requirement would pull a CUDA torch)")


def versions() -> dict:
    return _versions("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "nncf", "transformers")


def prepare(spec: dict, variant: str, out) -> dict:
    model = out / "model"
    cli = Path(sys.executable).with_name("optimum-cli")  # the console script of this interpreter's optimum
    cmd = [cli, "export", "openvino", "-m", spec["llama_dir"], "--task", "text-generation-with-past",
           *WEIGHTS[variant], model]
    command = run_tool(cmd, "optimum-cli export openvino")
    size = sum(f.stat().st_size for f in model.iterdir() if f.is_file() and "tokenizer" not in f.name)
    return {"command": shown(command, spec).replace(str(cli), "optimum-cli"), "artifact_mb": round(size / 1e6, 1)}


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        self.spec = spec
        self.pipe = ov_genai.LLMPipeline(str(art / "model"), "CPU", ATTENTION_BACKEND="SDPA",
                                         INFERENCE_NUM_THREADS=spec["threads"], PERFORMANCE_HINT="LATENCY")
        ids = np.asarray([spec["prompt_ids"]], dtype=np.int64)  # [1, P]
        self.inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        n = spec["new_tokens"]
        self.config = ov_genai.GenerationConfig(max_new_tokens=n, min_new_tokens=n, ignore_eos=True,
                                                do_sample=False)
        self.info = {"attention_backend": "SDPA", "prefill_source": "perf_metrics.get_ttft()"}

    def run(self) -> dict:
        t = time.perf_counter()
        result = self.pipe.generate(self.inputs, self.config)
        wall_ms = 1e3 * (time.perf_counter() - t)
        metrics = result.perf_metrics
        prefill, decode = metrics.get_ttft().mean, metrics.get_tpot().mean  # ms
        tokens = len(result.tokens[0])
        if not prefill + decode * (tokens - 1) <= wall_ms * 1.05:  # the metrics must fit in the wall time
            raise RuntimeError(f"perf metrics (ttft {prefill:.1f} ms, tpot {decode:.2f} ms) exceed the wall time")
        return {"prefill_ms": prefill, "decode_ms_per_token": decode, "tokens": tokens}
