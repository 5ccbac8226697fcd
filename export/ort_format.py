"""ONNX -> ORT format (`edgevlm export --format ort`): mobile / minimal-build ready graphs.

Each graph is saved by ONNX Runtime itself (session.save_model_format=ORT) after the *basic*
optimizations only: those are platform independent, so one .ort file serves x86 and ARM alike
(the extended/all levels may insert kernels of the exporting machine, e.g. NCHWc layouts).
`required_operators.config` lists the operators (domain;opset;ops) the .ort graphs need, for
an ORT build with --minimal_build --include_ops_by_config required_operators.config.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgevlm.bundle import GRAPHS

OPS_CONFIG = "required_operators.config"


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(ort_path)
    so.log_severity_level = 3
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    if not ort_path.is_file():
        raise RuntimeError(f"onnxruntime did not write {ort_path.name}")


def write_ops_config(ort_paths: list[Path], out: Path) -> None:
    """required_operators.config from the .ort graphs (onnxruntime.tools' own helper), with the
    graphs named by file name only (not the export machine's temporary paths)."""
    import logging

    from onnxruntime.tools.ort_format_model import create_config_from_models

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # its INFO line names our temp dir
    create_config_from_models(ort_paths, out, enable_type_reduction=False)
    names = {str(p): p.name for p in ort_paths}
    lines = [names.get(line[4:], line[4:]) if line.startswith("# - ") else line
             for line in out.read_text(encoding="utf-8").splitlines()]
    lines = [f"# - {line}" if line in names.values() else line for line in lines]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ort_graphs(work: Path) -> dict[str, str]:
    """Write {graph}.ort next to each {graph}.onnx in `work`, and the ops config.
    Returns {graph: ort file name}."""
    files = {}
    for name in GRAPHS:
        convert_to_ort(work / f"{name}.onnx", work / f"{name}.ort")
        files[name] = f"{name}.ort"
    write_ops_config([work / f for f in files.values()], work / OPS_CONFIG)
    return files
