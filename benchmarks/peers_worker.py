"""Child process of benchmarks/peers.py: one runtime adapter, in whichever interpreter has it.

    python peers_worker.py probe   ADAPTER SPEC                -> one JSON line: versions, or why not
    python peers_worker.py prepare ADAPTER VARIANT SPEC OUTDIR -> converts the checkpoint, one JSON line
    python peers_worker.py serve   ADAPTER VARIANT SPEC OUTDIR -> loads, warms up, prints {"ready": true},
                                                                  then one JSON line per "run" on stdin

Why a separate process per peer: a crash, a missing package or a clashing dependency in one
runtime becomes a printed reason, never a number from the wrong process, and each peer may
live in its own virtualenv (peers.py --peer-python). So this file imports only the standard
library; the adapter (peers_<name>.py beside it) imports its runtime lazily.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # adapters and smolvlm_latency, by path

from smolvlm_latency import _peak_rss_mb  # noqa: E402  (VmHWM of this process, stdlib only)

METRICS = ("prefill_ms", "decode_ms_per_token", "vision_ms_per_tile", "setup_ms")


def _protocol():
    """A private copy of stdout for the JSON lines; fd 1 then points at stderr, so whatever a
    runtime or converter prints (banners, progress bars) lands in the log, not in the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def reason(exc: BaseException) -> str:
    """One line for the report: the exception type and the last non-empty line of its message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def _check(result: dict, spec: dict, decodes: bool = True) -> dict:
    """Refuse a run that did not do the workload: a wrong token count or a non-positive time
    would otherwise enter the table as a plausible-looking number. A vision-only adapter
    (DECODES = False) must give a vision time and no decoder times instead."""
    if not decodes:
        if result.get("vision_ms_per_tile") is None or {"prefill_ms", "decode_ms_per_token"} & result.keys():
            raise RuntimeError("a vision-only peer must time one tile and no decoder")
    elif result.get("tokens") != spec["new_tokens"]:
        raise RuntimeError(f"generated {result.get('tokens')} tokens, the workload forces {spec['new_tokens']}")
    for key in METRICS:
        value = result.get(key)
        if value is not None and not value > 0:
            raise RuntimeError(f"{key} = {value} is not a positive time")
    return result


def _serve(adapter, variant: str, spec: dict, out: Path, send) -> None:
    t = time.perf_counter()
    runner = adapter.Runner(spec, variant, out)
    load_s = time.perf_counter() - t
    decodes = getattr(adapter, "DECODES", True)
    for _ in range(spec["warmup"]):  # warm-ups: first-run allocations and caches, never reported
        _check(runner.run(), spec, decodes)
    send({"ok": True, "ready": True, "load_s": round(load_s, 3), "info": getattr(runner, "info", {})})
    for line in sys.stdin:
        if line.strip() != "run":
            break
        result = _check(runner.run(), spec, decodes)
        send({"ok": True, **{k: round(v, 4) for k, v in result.items() if k in METRICS and v is not None},
              "peak_rss_mb": _peak_rss_mb()})


def main(argv: list[str]) -> int:
    proto = _protocol()

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    command, name = argv[0], argv[1]
    try:
        adapter = importlib.import_module(f"peers_{name}")
        if command == "probe":
            spec = json.loads(Path(argv[2]).read_text())
            why = adapter.missing(spec)
            send({"ok": why is None, "reason": why, "versions": {} if why else adapter.versions()})
            return 0
        variant, spec, out = argv[2], json.loads(Path(argv[3]).read_text()), Path(argv[4])
        out.mkdir(parents=True, exist_ok=True)
        if command == "prepare":
            t = time.perf_counter()
            info = adapter.prepare(spec, variant, out)
            send({"ok": True, "convert_s": round(time.perf_counter() - t, 2), **info})
        elif command == "serve":
            _serve(adapter, variant, spec, out, send)
        else:
            raise ValueError(f"unknown command {command!r}")
        return 0
    except Exception as exc:  # any failure of a peer is its skip reason; the traceback goes to its log
        traceback.print_exc()
        send({"ok": False, "reason": reason(exc)})
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
