"""Optimum's ONNX exporter on the SigLIP vision tower, run by plain ONNX Runtime: what a user who
takes the Hugging Face route (optimum-onnx + onnxruntime.quantization) gets for one vision tile.

The Idefics3 vision tower of the random checkpoint is SigLIP's architecture with SigLIP's tensor
names, so its weights load strictly into a transformers SiglipVisionModel without the pooling
head, which optimum exports as model type "siglip_vision_model". Two differences from the VLM's
tower, neither of which changes the cost: the connector (pixel shuffle + one 12288x576 MatMul,
under 1% of the tower's FLOPs) is not part of it, and transformers 4.x's Idefics3 buckets the
patch positions of a full tile as [0, 0, 1, .., 30] per side where SigLIP (and Idefics3 in
transformers 5) uses 0..31: the same gather of other rows. optimum's stock
config also asks for pooler_output, which a head-less SiglipVisionModel does not return, so the
export gets that config with last_hidden_state as its only output.

int8 is onnxruntime.quantization.quantize_dynamic (per-channel int8 weights, activations
quantized at run time) on the fp32 export. prepare checks each graph against the PyTorch module
on one random tile; the error is kept in the row's notes. Vision only: no decoder is timed.

optimum-onnx 0.1.0 (the release on PyPI) pins transformers < 4.58 and optimum ~= 2.1, so it needs
an interpreter of its own, e.g.
    python -m venv OPT && OPT/bin/pip install torch==2.13.0+cpu 'optimum-onnx[onnxruntime]==0.1.0'
(the +cpu torch from PyTorch's CPU index or a local wheel first, so pip does not pull a CUDA one),
then peers.py --peer-python OPT/bin/python.
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

from peers_util import missing_modules, random_pixels, versions as _versions

TITLE = "Optimum ONNX + ONNX Runtime (SigLIP)"
VARIANTS = {"full": ("fp32", "int8"), "smoke": ("int8",)}
DECODES = False  # vision only: peers_worker checks for a vision time instead of the token count
SETUP = "python -m venv OPT && OPT/bin/pip install torch==2.13.0+cpu 'optimum-onnx[onnxruntime]==0.1.0'"


def _unmet(dist: str) -> str | None:
    """The first of `dist`'s declared requirements that this interpreter does not satisfy:
    optimum-onnx imports, then fails, under a transformers it does not support."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # nothing to check with; prepare reports the failure if there is one
        return None
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None:  # extras and platform-specific requirements
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return f"{dist} requires {req}, which is not installed"
        if not req.specifier.contains(have, prereleases=True):
            return f"{dist} {metadata.version(dist)} requires {req}; this interpreter has {have}"
    return None


def missing(spec: dict) -> str | None:
    hint = f"it needs its own venv: {SETUP}"
    why = missing_modules("optimum.exporters.onnx", "onnxruntime", "torch", "transformers", "safetensors",
                          hint=hint)
    if why is None and (why := _unmet("optimum-onnx")):
        why = f"{why} ({hint})"
    return why


def versions() -> dict:
    return _versions("optimum-onnx", "optimum", "onnxruntime", "transformers", "torch")


def _siglip(vlm_dir: str, out):
    """A SiglipVisionModel (no pooling head) holding the VLM's vision tower, saved to `out`."""
    from safetensors import safe_open
    from transformers import SiglipVisionConfig, SiglipVisionModel

    vlm_dir = Path(vlm_dir)
    vision = json.loads((vlm_dir / "config.json").read_text())["vision_config"]
    config = SiglipVisionConfig(**{k: v for k, v in vision.items()
                                   if k not in ("model_type", "architectures", "transformers_version")},
                                vision_use_head=False)
    index = vlm_dir / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    prefix, state = "model.vision_model.", {}
    for shard in shards:
        with safe_open(vlm_dir / shard, "pt") as f:
            state.update({"vision_model." + k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    model = SiglipVisionModel(config).eval()
    model.load_state_dict(state, strict=True)  # every tower tensor used, none left over
    model.save_pretrained(out)
    return model


def _rel_rms(got, want) -> float:
    import numpy as np

    return float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want ** 2)))


def prepare(spec: dict, variant: str, out) -> dict:
    import onnxruntime as ort
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.exporters.onnx.model_configs import SiglipVisionModelOnnxConfig
    from transformers import AutoConfig

    class TowerOnly(SiglipVisionModelOnnxConfig):
        @property
        def outputs(self):
            return {"last_hidden_state": {0: "batch_size"}}

    model = _siglip(spec["vlm_dir"], out / "siglip")
    onnx_dir = out / "onnx"
    config = AutoConfig.from_pretrained(out / "siglip")
    main_export(str(out / "siglip"), str(onnx_dir), task="feature-extraction", library_name="transformers",
                custom_onnx_configs={"model": TowerOnly(config, task="feature-extraction")})
    command = ("SiglipVisionModel(VLM vision_config, vision_use_head=False) <- VLM_DIR model.vision_model.*; "
               "optimum.exporters.onnx.main_export(SIGLIP, ONNX, task='feature-extraction', "
               "custom_onnx_configs={'model': siglip_vision_model config, last_hidden_state only})")
    graph = onnx_dir / "model.onnx"
    if variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx_dir / "model_int8.onnx"
        quantize_dynamic(onnx_dir / "model.onnx", graph, per_channel=True, weight_type=QuantType.QInt8)
        command += " && onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)"
    pixels = random_pixels(spec["tile_size"])  # [1, 3, H, W]
    with torch.inference_mode():
        want = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()  # [1, T, D]
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": pixels})[0]
    error = _rel_rms(got, want)
    if not error < (1e-3 if variant == "fp32" else 0.1):  # a broken export must not be timed
        raise RuntimeError(f"{variant} graph disagrees with PyTorch: rel. RMS error {error:.3g}")
    check = {"graph": graph.name, "rel_rms_vs_pytorch": float(f"{error:.2g}")}
    (out / "check.json").write_text(json.dumps(check))
    return {"command": command, "artifact_mb": round(graph.stat().st_size / 1e6, 1)}


class Runner:
    def __init__(self, spec: dict, variant: str, art):
        import onnxruntime as ort

        check = json.loads((art / "check.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = spec["threads"], 1
        self.session = ort.InferenceSession(str(art / "onnx" / check["graph"]), options,
                                            providers=["CPUExecutionProvider"])
        self.feed = {"pixel_values": random_pixels(spec["tile_size"])}  # [1, 3, H, W]
        self.info = {"timed": "SigLIP vision tower only (no connector, no decoder)",
                     "error vs PyTorch (rel. RMS)": check["rel_rms_vs_pytorch"]}

    def run(self) -> dict:
        t = time.perf_counter()
        self.session.run(None, self.feed)  # [1, T, D]
        return {"vision_ms_per_tile": 1e3 * (time.perf_counter() - t)}
