"""Write a bundle's edgevlm.json: everything the runtime needs besides the graph files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from edgevlm import __version__
from edgevlm.bundle import FORMAT_NAME, FORMAT_VERSION, GRAPHS, MANIFEST, sha256_file


def graph_io(path: Path) -> dict:
    """Names and shapes (symbolic dims as names) of a graph's inputs and outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def shapes(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return {"inputs": shapes(model.graph.input), "outputs": shapes(model.graph.output)}


def write_manifest(out: Path, *, architecture: str, config: dict, preprocess: dict, prompt: dict,
                   special_tokens: dict, generation: dict, validation: dict, precision: str | dict = "fp32",
                   ort_graphs: dict | None = None, ops_config: str | None = None,
                   data_files=(), packed: dict | None = None, split: dict | None = None) -> dict:
    """precision: one for every graph, or {graph: precision}.
    ort_graphs: {graph: .ort file} and ops_config (file name) for an ORT-format export (export/ort_format.py):
    listed under "ort_graphs" / "required_operators" and checksummed like every other file.
    data_files: the graphs' external-data files (export/external_data.py), checksummed too.
    packed: {graph: packed_weights entry} of graphs whose int8 weights ship at 4 bit
    (edgevlm.runtime.packed_weights).
    split: {graph: split entry} of graphs cut at their attention nodes (export/vision_split.py);
    the parts are checksummed files."""
    graphs = {}
    for name in GRAPHS:
        prec = precision[name] if isinstance(precision, dict) else precision
        graphs[name] = {"file": f"{name}.onnx", "precision": prec, **graph_io(out / f"{name}.onnx")}
        if name in (packed or {}):
            graphs[name]["packed_weights"] = packed[name]
        if name in (split or {}):
            graphs[name]["split"] = split[name]
    files = sorted([f"{g}.onnx" for g in GRAPHS] + ["tokenizer.json"] + list((ort_graphs or {}).values())
                   + ([ops_config] if ops_config else []) + list(data_files)
                   + [p for entry in (split or {}).values() for p in entry["parts"] + [entry.get("weights")] if p])
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"edgevlm {__version__}",
        "architecture": architecture,
        "config": config,
        "graphs": graphs,
        "preprocess": preprocess,
        "prompt": prompt,
        "special_tokens": special_tokens,
        "generation": generation,
        "validation": validation,
        **({"ort_graphs": dict(ort_graphs)} if ort_graphs else {}),
        **({"required_operators": ops_config} if ops_config else {}),
        "files": {name: sha256_file(out / name) for name in files},
    }
    tmp = out / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / MANIFEST)  # the manifest appears last, whole: a half-written bundle has none
    return manifest
