"""ONNX Runtime GenAI: its model builder turns the local Llama checkpoint dir into ONNX, and
og.Generator runs it (decoder only: the builder has no SigLIP/Idefics3 vision path).

Timing follows the Generator's own split: append_tokens runs the prompt through the model
(prefill), the first generate_next_token only picks from those logits, and each later
generate_next_token runs one decoder step then picks. min_length = max_length forces exactly
the workload's token count whatever the random model emits.
"""

from __future__ import annotations

import json
import sys
import time

from peers_util import missing_modules, run_tool, shown, versions as _versions

TITLE = "ONNX Runtime GenAI"
VARIANTS = {"full": ("int4", "int8", "fp32"), "smoke": ("int4",)}


def missing(spec: dict) -> str | None:
    # the builder reads the checkpoint with torch + transformers; the runtime needs neither
    return missing_modules("onnxruntime_genai", "torch", "transformers", "onnx",
                           hint="pip install onnxruntime-genai torch==2.13.0 transformers onnx")


def versions() -> dict:
    return _versions("onnxruntime-genai", "onnxruntime", "transformers", "torch")


def prepare(spec: dict, variant: str, out) -> dict:
    model = out / "model"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", spec["llama_dir"], "-o", model,
           "-p", variant, "-e", "cpu", "-c", out / "cache"]
    command = run_tool(cmd, "onnxruntime_genai model builder")
    size = sum(f.stat().st_size for f in model.iterdir() if f.is_file())
    return {"command": shown(command, spec), "artifact_mb": round(size / 1e6, 1)}


def _pin_threads(config_path, threads: int) -> None:
    """The builder leaves thread counts to ONNX Runtime's default (all cores); the workload pins
    them, through the session options genai_config.json passes to ONNX Runtime."""
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    config_path.write_text(json.dumps(config, indent=4))


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import onnxruntime_genai as og

        _pin_threads(art / "model" / "genai_config.json", spec["threads"])
        self.og, self.spec = og, spec
        self.model = og.Model(str(art / "model"))
        self.ids = list(spec["prompt_ids"])
        self.length = len(self.ids) + spec["new_tokens"]
        # Generator creation costs ~12 ms even on the 2-layer smoke model: a fixed per-request cost,
        # not prompt work, so it is kept out of prefill and reported as setup_ms in the JSON
        self.info = {"prefill": "append_tokens + first pick; og.Generator creation is setup_ms"}

    def run(self) -> dict:
        og, n = self.og, self.spec["new_tokens"]
        t0 = time.perf_counter()
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.length, min_length=self.length)
        generator = og.Generator(self.model, params)  # per-request state; reported apart as setup_ms
        t1 = time.perf_counter()
        generator.append_tokens(self.ids)  # prefill
        generator.generate_next_token()  # first token, from the prefill logits
        t2 = time.perf_counter()
        for _ in range(n - 1):
            generator.generate_next_token()  # one decoder step, then pick
        t3 = time.perf_counter()
        tokens = len(generator.get_sequence(0)) - len(self.ids)
        return {"prefill_ms": 1e3 * (t2 - t1), "decode_ms_per_token": 1e3 * (t3 - t2) / max(n - 1, 1),
                "setup_ms": 1e3 * (t1 - t0), "tokens": tokens}
