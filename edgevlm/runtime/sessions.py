"""ONNX Runtime sessions for the three graphs of a bundle, with explicit options."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnxruntime as ort

from edgevlm.bundle import GRAPHS, Bundle
from edgevlm.errors import BundleError


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 0  # 0: all physical cores this process may use
    spinning: bool = True  # spin-wait between ops: lower latency, busier cores
    optimization: str = "all"  # "all" | "extended" | "basic" | "disabled"


_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(opts: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _LEVELS[opts.optimization]
    so.log_severity_level = 3  # errors only: warnings about unused initializers are noise to a user
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spinning else "0")
    return so


def open_sessions(bundle: Bundle, opts: RuntimeOptions) -> dict[str, ort.InferenceSession]:
    so = session_options(opts)
    sessions = {}
    for name in GRAPHS:
        path = bundle.graph_path(name)
        try:
            sessions[name] = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, all Exceptions
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BundleError(f"cannot load {path.name}: {first[:160]}") from None
    return sessions
