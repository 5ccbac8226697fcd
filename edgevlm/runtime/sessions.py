"""ONNX Runtime sessions for the three graphs of a bundle, with explicit options.

Before a graph reaches ONNX Runtime its external data is checked (edgevlm.onnx_safety); once the
sessions exist, `check_graphs` holds their inputs and outputs against the manifest's config, so a
bundle whose edgevlm.json and graphs disagree fails at load with one line, not mid-caption.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgevlm.bundle import GRAPHS, MODEL_FORMATS, Bundle
from edgevlm.config import VLMConfig
from edgevlm.errors import BundleError, ConfigError
from edgevlm.onnx_safety import check_external_data
from edgevlm.runtime import attention_kernel, mlp_kernel
from edgevlm.runtime.mlp_weights import mlp_layers
from edgevlm.runtime.packed_weights import unpacked_graph
from edgevlm.runtime.vision_split import SplitVision, check_split_spec, missing_kernels


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 0  # 0: all physical cores this process may use
    spinning: bool = True  # spin-wait between ops: lower latency, busier cores
    optimization: str = "all"  # "all" | "extended" | "basic" | "disabled"
    model_format: str = "onnx"  # "onnx" | "ort": the bundle's ORT-format graphs (edgevlm export --format ort)
    # "auto": a split vision graph's attention on our bf16 kernel where this CPU has it, else the
    # whole graph on ONNX Runtime; "bf16": the kernel or an error; "fp32": always ONNX Runtime
    vision_attention: str = "auto"


VISION_ATTENTION = ("auto", "bf16", "fp32")


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


def session_options(opts: RuntimeOptions, graph: str | None = None) -> ort.SessionOptions:
    """graph: which bundle graph the session runs. Each session has its own thread pool, and a
    pool's workers would keep spinning for tens of ms after its run, taking a core from the session
    (or our attention kernel) that runs next. So embed_tokens (one Gather) runs on the caller's
    thread alone, and every pool spins only inside a run (between ops, where it saves wake-ups)
    and stops when the run returns (session.force_spinning_stop). Measured at the SmolVLM-256M
    shape, int4, 2 threads, one process each, medians of 10: a vision tile right after a 64-token
    decode 231-247 -> 214 ms (the same as a tile alone, 207-217 ms); decode 3.8-4.2 ms/token and
    prefill of 170 tokens after a vision tile 103-113 ms either way. Vision spinning inside its
    runs, same-process A/B: 1-2% faster than not spinning."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1 if graph == "embed_tokens" else (opts.threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _LEVELS[opts.optimization]
    # fatal only: warnings about unused initializers are noise to a user, and an error reaches the user
    # as our one-line BundleError (ORT's own log lines would make it several lines on stderr)
    so.log_severity_level = 4
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spinning else "0")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    # No memory pattern: ORT would plan one block per input shape seen and keep each, and our
    # shapes change every call (prefill length, decode, tile count). Measured at the SmolVLM-256M
    # shape, int4, one 512 px tile, 6 captions: peak RSS 458 -> 415 MB, same vision/prefill/decode times.
    so.enable_mem_pattern = False
    # One CPU arena for every session of the process: the vision encoder's activations are freed
    # before prefill needs its own, so the two peaks overlap instead of adding up. Measured at the
    # SmolVLM-256M shape, int4 (split vision), one 512 px tile, 170 prompt tokens: peak RSS
    # 411 -> 402 MB, times unchanged; resident after a caption 443 -> 385 MB. A vision graph run in
    # parts (vision_split.py) needs it most: 13 sessions with 13 arenas peaked at 859 MB.
    _shared_arena()
    so.add_session_config_entry("session.use_env_allocators", "1")
    return so


def open_sessions(bundle: Bundle, opts: RuntimeOptions) -> dict[str, ort.InferenceSession]:
    if opts.model_format not in MODEL_FORMATS:
        raise ConfigError(f"model format must be one of {', '.join(MODEL_FORMATS)}, got {opts.model_format!r}")
    if opts.vision_attention not in VISION_ATTENTION:
        raise ConfigError(f"vision attention must be one of {', '.join(VISION_ATTENTION)}, "
                          f"got {opts.vision_attention!r}")
    sessions = {}
    for name in GRAPHS:
        so = session_options(opts, name)
        if opts.model_format == "ort":
            # an ORT-format graph is a flatbuffer without external data: the bundle check (inside the
            # directory, listed, sha256) is its file check; say the format rather than trust the suffix
            so.add_session_config_entry("session.load_model_format", "ORT")
        path = bundle.graph_path(name, opts.model_format)
        packed = bundle.manifest["graphs"][name].get("packed_weights") if opts.model_format == "onnx" else None
        split = _split_entry(bundle, name, opts)
        if split is not None:
            sessions[name] = _split_session(bundle, path, split, packed, so, opts)
            continue
        if packed is not None:
            sessions[name] = _packed_session(bundle, path, packed, so)
            continue
        if opts.model_format == "onnx":
            # external data must be a listed (so checksummed) file inside the bundle, before ORT reads it
            check_external_data(path, bundle.path, allowed=set(bundle.manifest["files"]))
        else:
            _check_listed(bundle, path)
        sessions[name] = _session(path, so, bundle.path)
    return sessions


def _split_entry(bundle: Bundle, graph: str, opts: RuntimeOptions):
    """The graph's split entry when its attention is to run on the bf16 kernel, else None."""
    if graph != "vision_encoder" or opts.vision_attention == "fp32":
        return None
    split = bundle.manifest["graphs"][graph].get("split")
    if split is None or opts.model_format != "onnx":
        if opts.vision_attention == "bf16":
            raise ConfigError("--vision-attention bf16 needs a bundle whose vision graph is cut for the "
                              "kernel (edgevlm export --attention fused --quant int8|int4|mixed), as .onnx")
        return None
    missing = missing_kernels(split)
    if missing:
        if opts.vision_attention == "bf16":
            raise ConfigError(f"--vision-attention bf16 is not available here: {missing[0]}")
        return None
    return split


def _split_session(bundle: Bundle, path: Path, spec, packed, so: ort.SessionOptions, opts: RuntimeOptions):
    """The vision graph as its parts with our attention and MLP kernels between them (vision_split.py)."""
    listed = set(bundle.manifest["files"])
    parts, stages = check_split_spec(spec, path.name, listed)
    threads = opts.threads or default_threads()
    if packed is not None:
        _check_packed(bundle, path, packed)
    layers = mlp_layers(bundle.path, packed, spec, stages, threads)

    def attend(q, k, v, heads, scale, q_free):
        return attention_kernel.attention_bf16(q, k, v, heads, scale, threads, into_q=q_free)

    def mlp(i, x, res, res_free):
        fc1, fc2, pre = layers[i]
        return mlp_kernel.mlp_int8(x, res, fc1, fc2, threads, into_res=res_free, pre=pre)

    if packed is None:
        return SplitVision(_part_sessions(bundle.path, parts, listed, so), stages, attend, mlp)
    shared = _shared_data(bundle, path)
    with unpacked_graph(bundle.path, path.name, packed, also=parts + shared) as copy:
        sessions = _part_sessions(copy.parent, parts, {packed["expands_to"], *shared}, so)
        return SplitVision(sessions, stages, attend, mlp)


def _part_sessions(where: Path, parts: list[str], allowed: set[str], so: ort.SessionOptions) -> list:
    """One session per part file in `where`; each may read only the `allowed` data files there."""
    sessions = []
    for part in parts:
        check_external_data(where / part, where, allowed=allowed)
        sessions.append(_session(where / part, so, where))
    return sessions


def _shared_data(bundle: Bundle, path: Path) -> list[str]:
    """The graph's own data file (GRAPH.onnx.data), where a packed graph and its parts keep their
    other weights, if the bundle lists one; it goes into the unpacking directory beside them."""
    return [f for f in (path.name + ".data",) if f in bundle.manifest["files"]]


_ARENA: list = []
_ARENA_LOCK = threading.Lock()


def _shared_arena() -> None:
    """Register, once per process, the CPU arena that sessions asking for
    session.use_env_allocators share."""
    with _ARENA_LOCK:
        if not _ARENA:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
            _ARENA.append(info)


def _check_listed(bundle: Bundle, path: Path) -> None:
    """A graph ORT reads whole, with no external data to check: the bundle's own check (listed, so
    checksummed) is its file check."""
    if path.name not in bundle.manifest["files"] or not path.is_file():
        raise BundleError(f"bundle file {path.name} is missing or not checksummed in edgevlm.json")


def _session(path: Path, so: ort.SessionOptions, shown_dir: Path) -> ort.InferenceSession:
    try:
        # enable_fallback=0: on a failure, onnxruntime's wrapper would print an "EP Error" banner
        # to stdout and retry with the same provider
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"],
                                    enable_fallback=0)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types, all Exceptions
        raise BundleError(f"cannot load {path.name}: {ort_message(exc, shown_dir)}") from None


def _packed_session(bundle: Bundle, path: Path, spec, so: ort.SessionOptions) -> ort.InferenceSession:
    """A graph whose int8 weights ship at 4 bit (edgevlm.runtime.packed_weights): unpacked into a
    temporary directory; the graph may read only the expanded file there."""
    _check_packed(bundle, path, spec)
    shared = _shared_data(bundle, path)
    with unpacked_graph(bundle.path, path.name, spec, also=shared) as copy:
        check_external_data(copy, copy.parent, allowed={spec["expands_to"], *shared})
        return _session(copy, so, copy.parent)


def _check_packed(bundle: Bundle, path: Path, spec) -> None:
    if (not isinstance(spec, dict) or not isinstance(spec.get("file"), str)
            or spec["file"] not in bundle.manifest["files"]):
        raise BundleError(f"{path.name}: its packed weights are not a checksummed file of the bundle")
    if path.parent != bundle.path:  # the copy keeps the graph's own name, beside its expanded file
        raise BundleError(f"{path.name}: a graph with packed weights must be at the bundle's top level")
    _check_listed(bundle, path)


# Every exception type onnxruntime raises (Fail, InvalidArgument, RuntimeException, ...; all plain Exceptions),
# and UnicodeDecodeError: what its bindings raise instead when a name or message from a corrupt graph is not UTF-8.
class BoundRunError(RuntimeError):
    """A run_with_iobinding failure: onnxruntime reports those as a plain RuntimeError."""


def run_bound(session, binding) -> None:
    """session.run_with_iobinding, with its failures (e.g. a corrupt graph's shape mismatch at
    run time) as BoundRunError, so they are told apart from RuntimeErrors of our own code."""
    try:
        session.run_with_iobinding(binding)
    except RuntimeError as exc:
        raise BoundRunError(str(exc)) from None


ORT_ERRORS = tuple(v for v in vars(_ort_state).values() if isinstance(v, type) and issubclass(v, Exception)) + (
    UnicodeDecodeError, BoundRunError, attention_kernel.AttentionError)


def ort_message(exc: BaseException, bundle_dir: Path) -> str:
    """The first line of an onnxruntime error, without the machine's path of the bundle."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    for prefix in {str(bundle_dir.resolve()), str(bundle_dir)}:
        text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    return text[:200]


def check_graphs(sessions: dict[str, ort.InferenceSession], cfg: VLMConfig, tile_size: int,
                 files: dict[str, str] | None = None) -> None:
    """The manifest's config must describe the graphs it ships with: every input the runtime binds
    and output it reads, by name, element type and every static dimension. Raises BundleError
    naming the file each session was loaded from (files: graph -> file name; default NAME.onnx)."""
    text = cfg.text
    kv = ("tensor(float)", [None, text.num_kv_heads, None, text.head_dim])  # [B, KVH, T, hd]
    expected = {
        "vision_encoder": ({"pixel_values": ("tensor(float)", [None, 3, tile_size, tile_size])},
                           {"image_embeds": ("tensor(float)", [None, cfg.image_seq_len, text.hidden_size])}),
        "embed_tokens": ({"input_ids": ("tensor(int64)", [None, None])},
                         {"inputs_embeds": ("tensor(float)", [None, None, text.hidden_size])}),
        "decoder": ({"inputs_embeds": ("tensor(float)", [None, None, text.hidden_size]),
                     "position_ids": ("tensor(int64)", [None, None]),
                     **{f"past.{i}.{x}": kv for i in range(text.num_layers) for x in "kv"}},
                    {"logits": ("tensor(float)", [None, text.vocab_size]),
                     **{f"present.{i}.{x}": kv for i in range(text.num_layers) for x in "kv"}}),
    }
    for graph_name, (inputs, outputs) in expected.items():
        session, graph = sessions[graph_name], (files or {}).get(graph_name, f"{graph_name}.onnx")
        try:
            found = {kind: {v.name: (v.type, v.shape) for v in values}
                     for kind, values in (("input", session.get_inputs()), ("output", session.get_outputs()))}
        except ORT_ERRORS as exc:
            raise BundleError(f"{graph} has unreadable input/output names ({type(exc).__name__})") from None
        for kind, want in (("input", inputs), ("output", outputs)):
            have = found[kind]
            if set(have) != set(want):
                odd = sorted(set(have) ^ set(want))
                raise BundleError(f"{graph} does not match edgevlm.json: its {kind}s differ in "
                                  f"{', '.join(repr(n[:60]) for n in odd[:4])}{' ...' if len(odd) > 4 else ''}")
            for name, (dtype, dims) in want.items():
                got_type, got_dims = have[name]
                if got_type != dtype or len(got_dims) != len(dims) or any(
                        isinstance(g, int) and w is not None and g != w for g, w in zip(got_dims, dims)):
                    shown = [w if w is not None else "*" for w in dims]
                    raise BundleError(f"{graph} does not match edgevlm.json: {kind} {name} is {got_type} "
                                      f"{list(got_dims)}, the config needs {dtype} {shown}")
