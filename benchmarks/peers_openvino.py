"""OpenVINO GenAI: optimum-intel exports the Llama checkpoint dir to OpenVINO IR (weights
compressed by NNCF), and openvino_genai.LLMPipeline runs it (decoder only here: its VLMPipeline
does not accept smolvlm).

The pipeline is built with ATTENTION_BACKEND=SDPA, the stateful pipeline: the default paged-
attention backend caches prompt prefixes, so the same prompt repeated would time a cache hit,
not a prefill. Prefill and decode come from the pipeline's own perf metrics (time to first token,
time per later output token); the wall time of the whole generate() is kept as a cross-check.

Variant vlm-int8 is the whole SmolVLM the optimum-intel way instead: `optimum-cli export openvino
--task image-text-to-text` of the VLM dir (int8 weights), run by OVModelForVisualCausalLM in Python.
Vision is its get_vision_embeddings (the vision tower + connector IR) on one tile; prefill and
decode are its language_model.generate (transformers' generate loop on the language-model IR) on
the text prompt, timed by a streamer at each token. optimum-intel 2.2 refuses to export idefics3
under transformers > 4.57.6 (the row is then skipped with that reason), so this variant needs an
interpreter with transformers 4.57.6, optimum 2.3, optimum-intel 2.2 (--no-deps: it asks for
torchvision, which would pull a CUDA torch) and openvino.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from peers_util import missing_modules, random_pixels, run_tool, shown, versions as _versions

TITLE = "OpenVINO GenAI"
TITLES = {"vlm-int8": "OpenVINO (optimum-intel, whole VLM)"}
VARIANTS = {"full": ("int4", "int8", "vlm-int8"), "smoke": ("int8",)}
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
    vlm = variant.startswith("vlm-")
    src, task = (spec["vlm_dir"], "image-text-to-text") if vlm else (spec["llama_dir"], "text-generation-with-past")
    cmd = [cli, "export", "openvino", "-m", src, "--task", task, *WEIGHTS[variant.removeprefix("vlm-")], model]
    command = run_tool(cmd, "optimum-cli export openvino")
    size = sum(f.stat().st_size for f in model.iterdir() if f.is_file() and "tokenizer" not in f.name)
    return {"command": shown(command, spec).replace(str(cli), "optimum-cli"), "artifact_mb": round(size / 1e6, 1)}


def Runner(spec: dict, variant: str, art):  # noqa: N802  (the worker calls adapter.Runner(...))
    return (_VLM if variant.startswith("vlm-") else _GenAI)(spec, variant, art)


class _GenAI:
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


class _VLM:
    """The optimum-intel OVModelForVisualCausalLM of the whole VLM: one tile through its vision
    embeddings, then the text prompt through its language model's generate."""

    def __init__(self, spec: dict, variant: str, art):
        import torch
        from optimum.intel import OVModelForVisualCausalLM
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            """generate() hands the streamer the prompt first, then each new token as it is picked."""

            def __init__(self):
                self.times = []

            def put(self, value):
                self.times.append(time.perf_counter())

            def end(self):
                pass

        self.torch, self.spec, self.clock = torch, spec, Clock
        self.model = OVModelForVisualCausalLM.from_pretrained(
            art / "model", device="CPU", ov_config={"INFERENCE_NUM_THREADS": spec["threads"],
                                                     "PERFORMANCE_HINT": "LATENCY"})
        self.pixels = torch.from_numpy(random_pixels(spec["tile_size"]))[None]  # [1, images=1, 3, H, W]
        self.ids = torch.tensor([spec["prompt_ids"]], dtype=torch.long)  # [1, P]
        config, vision = self.model.config, self.model.config.vision_config
        self.tile_tokens = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
        self.info = {"runtime": f"optimum-intel {type(self.model).__name__} (Python; transformers generate loop)",
                     "vision": "get_vision_embeddings: vision tower + connector IR, one tile",
                     "prefill/decode": "language_model.generate on the text prompt, streamer timestamps"}

    def run(self) -> dict:
        torch, n = self.torch, self.spec["new_tokens"]
        with torch.inference_mode():
            t0 = time.perf_counter()
            embeds = self.model.get_vision_embeddings(pixel_values=self.pixels, input_ids=None)  # [1, T_img, D]
            t1 = time.perf_counter()
            clock = self.clock()
            out = self.model.language_model.generate(
                input_ids=self.ids, attention_mask=torch.ones_like(self.ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, streamer=clock)  # [1, P + n]
        if embeds.shape[-2] != self.tile_tokens or len(clock.times) != n + 1:  # one tile, one put per token
            raise RuntimeError(f"vision gave {tuple(embeds.shape)}; the streamer saw {len(clock.times)} puts")
        first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt handed over before any work
        return {"vision_ms_per_tile": 1e3 * (t1 - t0), "prefill_ms": 1e3 * (first - t1),
                "decode_ms_per_token": 1e3 * (last - first) / max(n - 1, 1), "tokens": out.shape[1] - self.ids.shape[1]}
