"""Native PyTorch model -> validated ONNX bundle directory.

The bundle is built in a temporary sibling directory and renamed into place at the end,
so an interrupted export never leaves a half-written bundle under the requested name.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer
from tqdm import tqdm

from edgevlm.bundle import GRAPHS
from edgevlm.errors import EdgeVLMError
from edgevlm.export.external_data import EXTERNAL_MIN_BYTES, externalize_bundle
from edgevlm.export.graphs import EXPORTERS, export_decoder, export_vision, merge_decoder_linears
from edgevlm.export.manifest import write_manifest
from edgevlm.export.quantize import precisions, quantize_bundle_graphs
from edgevlm.export.vision_split import HEAD_DIMS, check_split, split_graph
from edgevlm.export.validate import (FP32_TOLERANCE, VALIDATORS, ExportValidationError, tolerance_for,
                                     validate_decoder)
from edgevlm.models.vlm import VLM


def export_bundle(model: VLM, tokenizer: Tokenizer, out: Path, *, preprocess: dict, prompt: dict,
                  special_tokens: dict, generation: dict, overwrite: bool = False,
                  tolerance: float = FP32_TOLERANCE, progress: bool = True,
                  attention: str = "default", quant: str = "fp32", model_format: str = "onnx",
                  external_min_bytes: int = EXTERNAL_MIN_BYTES, quant_gate: bool = True) -> dict:
    """Export, validate against PyTorch, and write the manifest. Returns the manifest.

    attention="fused": vision attention as com.microsoft.MultiHeadAttention, decoder attention as
    com.microsoft.GroupQueryAttention (shared KV buffer).
    quant="int8" | "int4" | "mixed": quantize graphs after their fp32 validation (export/quantize.py)
    and check each against its fp32 graph under that precision's tolerance; "mixed" first measures
    the decoder's per-layer int4 sensitivity in PyTorch on calibration images (export/quant_report.py).
    model_format="ort": also write each (final) graph in ONNX Runtime's ORT format plus
    required_operators.config (export/ort_format.py); the .onnx graphs stay.
    external_min_bytes: a graph with at least this many bytes of weights keeps them in GRAPH.onnx.data,
    and identical weights are stored once (export/external_data.py).
    quant_gate=False: keep a quantized graph that is outside its tolerance (random-weight benchmark
    models); the manifest records its error and "gate": "off"."""
    out = Path(out)
    if model_format not in ("onnx", "ort"):
        raise EdgeVLMError(f"unknown export format {model_format!r} (onnx or ort)")
    precision = precisions(quant)
    if out.exists() and not overwrite:
        raise EdgeVLMError(f"output directory {out.name} already exists; choose another or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    mixed = None
    if quant == "mixed":
        from edgevlm.export.quant_report import eos_id, mixed_plan

        mixed = mixed_plan(model, tokenizer, prompt, preprocess, eos_id(generation.get("eos_token_ids"), special_tokens))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        validation = {}
        steps = tqdm(GRAPHS, desc="export", unit="graph", disable=not progress)
        for name in steps:
            steps.set_postfix_str(name)
            path = work / f"{name}.onnx"
            if name == "decoder" and attention != "default":
                export_decoder(model, path, attention)
                validation[name] = validate_decoder(model, path, valid_slots_only=True)
            elif name == "vision_encoder" and attention != "default":
                export_vision(model, path, attention)
                validation[name] = VALIDATORS[name](model, path)
            else:
                EXPORTERS[name](model, path)
                validation[name] = VALIDATORS[name](model, path)
        validation = {k: {"max_abs_diff": diff, "tolerance": tolerance_for(k, tolerance, scale)}
                      for k, (diff, scale) in validation.items()}
        bad = {k: v for k, v in validation.items() if not v["max_abs_diff"] <= v["tolerance"]}
        if bad:
            worst = ", ".join(f"{k} {v['max_abs_diff']:.2e} > {v['tolerance']:.2g}" for k, v in bad.items())
            raise ExportValidationError(f"exported graphs disagree with PyTorch: {worst}")
        # packed: 4-bit vision weights (export/quant_vision4.py); the graph reads an int8 file the runtime makes
        checks, packed = quantize_bundle_graphs(work, precision, mixed, quant_gate)
        for name, entry in checks.items():
            validation[name].update(entry)
        if attention == "fused":  # the same arithmetic column by column (tests/test_merge_matmuls.py)
            renamed = merge_decoder_linears(work / "decoder.onnx")
            validation["decoder"]["merged_linears"] = len(renamed)
            for layer in validation["decoder"].get("mixed", {}).get("int8_layers", []):
                layer["node"] = renamed.get(layer["node"], layer["node"])
        split = _will_split(model, attention, precision)
        # the decoder before embed_tokens: a tied int4 table then points at the lm_head's bytes
        data_files = externalize_bundle(work, [g for g in ("vision_encoder", "decoder", "embed_tokens")
                                               if g not in packed or (split and g == "vision_encoder")],
                                        external_min_bytes, always=("vision_encoder",) if split else ())
        data_files += [spec["file"] for spec in packed.values()]
        if split:  # after externalizing: the parts keep the graph's data-file references
            vision_packed = packed.get("vision_encoder")
            split = split_graph(work / "vision_encoder.onnx", model.cfg.vision.hidden_size,
                                {t["name"] for t in vision_packed["tensors"]} if vision_packed else set())
            validation["vision_encoder"]["split"] = check_split(
                work / "vision_encoder.onnx", split, model.cfg.vision.image_size, packed=vision_packed)
        tokenizer.save(str(work / "tokenizer.json"))
        ort_graphs = ops_config = None
        if model_format == "ort":
            from edgevlm.export.ort_format import OPS_CONFIG, write_ort_graphs

            ort_graphs, ops_config = write_ort_graphs(work), OPS_CONFIG
        for spec in packed.values():  # validated (and ORT-format graphs written) with it; not shipped
            (work / spec["expands_to"]).unlink()
        manifest = write_manifest(
            work, architecture=model.cfg.architecture, config=model.cfg.to_dict(), preprocess=preprocess,
            prompt=prompt, special_tokens=special_tokens, generation=generation,
            validation=validation, precision=precision, ort_graphs=ort_graphs, ops_config=ops_config,
            data_files=data_files, packed=packed, split={"vision_encoder": split} if split else None,
        )
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _will_split(model: VLM, attention: str, precision: dict) -> bool:
    """Cut the vision graph for the bf16 attention kernel (export/vision_split.py)? Only where its
    attention is fused (one MultiHeadAttention per layer, with the config's heads), its weights
    are quantized (fp32 bundles keep fp32 attention) and its heads are the kernel's size."""
    vision = model.cfg.vision
    return (attention == "fused" and precision["vision_encoder"] != "fp32"
            and vision.hidden_size % vision.num_heads == 0 and vision.hidden_size // vision.num_heads in HEAD_DIMS)
