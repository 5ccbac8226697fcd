"""edgevlm: the bundle our own export path writes, timed through our torch-free runtime.

prepare runs the real CLI (`edgevlm export VLM_DIR -o OUT --attention fused --quant V`), so the
table measures what a user gets, and the recorded command is the one to repeat. The timed loop
is the runtime's own: VLM.encode_tiles for one tile, embed_tokens + OnnxDecoder.start for the
prefill, OnnxDecoder.step per token (the same calls VLM.run makes, minus image decode and the
sampling rules, so that every peer times only model work and greedy argmax).

Quantized variants are exported with --no-quant-gate: the random checkpoint's error is over the
export's quality gate, which speed does not depend on; a row whose graphs are over their tolerance
says so (its "quality gate" note gives the measured error).
"""

from __future__ import annotations

import sys
import time

from peers_util import missing_modules, random_pixels, run_tool, shown, versions as _versions

TITLE = "edgevlm"
VARIANTS = {"full": ("fp32", "int8", "int4", "mixed"), "smoke": ("int4",)}


def missing(spec: dict) -> str | None:
    # the runtime needs edgevlm + onnxruntime; prepare (export) also needs the export extra
    return missing_modules("edgevlm", "onnxruntime", "torch", "onnx", "onnxscript",
                           hint="pip install -e '.[export]' from the edgevlm checkout")


def versions() -> dict:
    return _versions("edgevlm", "onnxruntime", "torch", "onnx")


def _export(spec: dict, quant: str, bundle) -> str:
    # --no-quant-gate: the random checkpoint's untrained layers compound rounding error past the
    # export's quality gate (peers_model); speed does not depend on the values, so the bundle is kept
    # and its measured error is reported with the row
    cmd = [sys.executable, "-m", "edgevlm.cli", "export", spec["vlm_dir"], "-o", bundle, "--overwrite",
           "--attention", "fused", "--quant", quant, *(["--no-quant-gate"] if quant != "fp32" else [])]
    return shown(run_tool(cmd, "edgevlm export"), spec).replace("python -m edgevlm.cli", "edgevlm")


def _gate_report(bundle) -> dict:
    """{graph: its error vs fp32} of each graph that is over its tolerance (kept by --no-quant-gate)."""
    import json

    from edgevlm.export.quant_check import within

    manifest = json.loads((bundle / "edgevlm.json").read_text())
    over = {}
    for graph, entry in manifest["validation"].items():
        report = entry.get("quantized_vs_fp32")
        if report and not within(report, manifest["graphs"][graph]["precision"], graph):
            over[graph] = {k: round(v, 4) for k, v in report.items() if isinstance(v, float)}
    return over


def prepare(spec: dict, variant: str, out) -> dict:
    bundle = out / "bundle"
    command = _export(spec, variant, bundle)
    gate = _gate_report(bundle)
    size = sum(f.stat().st_size for f in bundle.iterdir() if f.is_file())
    return {"command": command, "artifact_mb": round(size / 1e6, 1),
            **({"quality_gate": f"off (--no-quant-gate), error vs fp32: {gate}"} if gate else {})}


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import numpy as np

        import edgevlm
        from edgevlm.runtime.decoder import OnnxDecoder

        self.np, self.spec, self.decoder_cls = np, spec, OnnxDecoder
        self.vlm = edgevlm.load(art / "bundle", threads=spec["threads"])
        self.ids = np.asarray(spec["prompt_ids"], dtype=np.int64)[None]  # [1, P]
        tile = self.vlm.preprocess_config.tile_size
        if tile != spec["tile_size"]:
            raise RuntimeError(f"bundle tile size {tile} != workload tile size {spec['tile_size']}")
        self.pixels = random_pixels(tile)  # [1, 3, H, W]
        graphs = self.vlm.bundle.manifest["graphs"]
        self.info = {"precision": ", ".join(f"{g} {v.get('precision')}" for g, v in graphs.items())}

    def run(self) -> dict:
        np, n = self.np, self.spec["new_tokens"]
        t0 = time.perf_counter()
        self.vlm.encode_tiles(self.pixels)  # [1, T_img, D]
        t1 = time.perf_counter()
        (embeds,) = self.vlm.sessions["embed_tokens"].run(None, {"input_ids": self.ids})  # [1, P, D]
        decoder = self.decoder_cls(self.vlm.sessions, self.vlm.config.text, embeds, self.ids.shape[1] + n)
        token = np.argmax(decoder.start(1), axis=-1)  # [1]: prefill and first token
        t2 = time.perf_counter()
        tokens = [token]
        for _ in range(n - 1):
            token = np.argmax(decoder.step(token), axis=-1)
            tokens.append(token)
        t3 = time.perf_counter()
        return {"prefill_ms": 1e3 * (t2 - t1), "decode_ms_per_token": 1e3 * (t3 - t2) / max(n - 1, 1),
                "vision_ms_per_tile": 1e3 * (t1 - t0), "tokens": len(tokens)}
