"""Peers side by side: one workload, one model shape, every runtime that is installed, one table.

Builds a random SmolVLM-256M-shaped checkpoint (benchmarks/peers_model.py), lets each runtime
convert it its own way, then times prefill (prompt -> first token), decode (ms per later token)
and, where the runtime has the vision tower, one vision tile. Each runtime/precision is a worker
process (benchmarks/peers_worker.py + peers_<name>.py) kept loaded, and the repeats go round-robin
over the workers, so drift on a shared machine hits every runtime alike. A peer that is not
installed, fails to convert or crashes is listed as skipped with its reason, never given a number.

    python benchmarks/peers.py                      # SmolVLM-256M shape, prompt 128, 64 new, 2 threads
    python benchmarks/peers.py --smoke              # tiny model, 2 repeats, 4 new tokens (CI)
    python benchmarks/peers.py --peer-python PEERS_VENV/bin/python --peers torch,edgevlm:int4,ortgenai:int4
    python benchmarks/peers.py --peer-python PEERS_VENV/bin/python --peer-python OPTIMUM_VENV/bin/python
        --llama-convert LLAMA_CPP/convert_hf_to_gguf.py     # (one line) every peer; optimum-onnx 0.1
                                                            # needs transformers<4.58, so a venv of its own

Writes benchmarks/results/peers.{md,json,png} (--smoke: peers_smoke.*), prints the markdown table
and ends with one JSON line. Needs the dev extras here; peers may live in other interpreters.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the peers_* modules by path: the worker loads them so in other interpreters too

import peers_model  # noqa: E402
import peers_report  # noqa: E402
from peers_proc import Peer, probe  # noqa: E402

ADAPTERS = ("torch", "edgevlm", "ortgenai", "openvino", "llamacpp", "optimum")  # torch first: the baseline


def _skip(skipped: list, title: str, variant: str | None, reason: str) -> None:
    skipped.append({"title": title, "variant": variant, "reason": reason})
    print(f"skipped: {title}{' ' + variant if variant else ''}: {reason}", flush=True)


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 repeats, 4 new tokens (CI)")
    ap.add_argument("--peers", help=f"comma list of adapter[:variant] (default: all of {', '.join(ADAPTERS)})")
    ap.add_argument("--peer-python", action="append", default=[], help="another interpreter to look for peers in")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, help="exactly this many new tokens (default 64; --smoke 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, help="timed runs per peer (default 5; --smoke 2)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="checkpoints (reused if present) and conversions; default: temp dir")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where the table goes")
    ap.add_argument("--llama-convert", type=Path,
                    help="llama.cpp's convert_hf_to_gguf.py (default: $LLAMA_CPP_CONVERT, then PATH)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for one conversion, load or run")
    # ONNX Runtime's pools (and OpenMP's) spin-wait for tens of ms after a run by default: without
    # a pause, each peer's first timed step would share the cores with the previous peer's spinning
    # workers (measured: Optimum + ORT int8 vision 370 -> 321 ms, edgevlm 249 -> 220 ms, with a 0.25 s pause)
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds of idle before each timed run, so no peer pays for the one before it")
    args = ap.parse_args(argv)
    args.new_tokens = args.new_tokens or (4 if args.smoke else 64)
    args.repeat = args.repeat or (2 if args.smoke else 5)
    for python in args.peer_python:
        if not os.access(python, os.X_OK):
            ap.error(f"--peer-python {python} is not an executable interpreter")
    if args.settle < 0:
        ap.error("--settle must be >= 0")
    if args.new_tokens < 2 or args.repeat < 1:
        ap.error("--new-tokens must be >= 2 (prefill gives the first) and --repeat >= 1")
    return args


def _select(args, spec_path: Path, work: Path, skipped: list) -> list[Peer]:
    """A Peer per adapter/variant asked for, in the first interpreter that has the adapter's runtime."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))  # OpenMP pools (torch) sized like the workload
    wanted = [p.split(":") for p in args.peers.split(",")] if args.peers else [[a] for a in ADAPTERS]
    peers = []
    for adapter in dict.fromkeys(w[0] for w in wanted):
        try:
            module = importlib.import_module(f"peers_{adapter}")
        except ImportError:
            _skip(skipped, adapter, None, f"no adapter benchmarks/peers_{adapter}.py (known: {', '.join(ADAPTERS)})")
            continue
        python, found = probe(adapter, [sys.executable, *args.peer_python], spec_path)
        if python is None:
            _skip(skipped, module.TITLE, None, found)
            continue
        variants = [w[1] for w in wanted if w[0] == adapter and len(w) > 1]
        variants = variants or module.VARIANTS["smoke" if args.smoke else "full"]
        peers += [Peer(adapter, v, python, found, work, env) for v in variants]
    return peers


def _measure(peers: list[Peer], args, spec_path: Path, skipped: list) -> list[Peer]:
    for peer in list(peers):  # conversions one at a time: they are not timed against each other
        peer.prepared = peer.call("prepare", spec_path, args.timeout)
        if not peer.prepared.pop("ok"):
            peers.remove(peer)
            _skip(skipped, peer.title, peer.variant, peer.prepared["reason"])
        else:
            print(f"prepared {peer.title} {peer.variant} in {peer.prepared['convert_s']:.1f} s", flush=True)
    for peer in peers:  # all load and warm up at once; nothing is timed until every one is ready
        peer.start(spec_path)
    for peer in list(peers):
        answer = peer.read(args.timeout)
        peer.info = answer.get("info", {})
        if not answer["ok"]:
            peers.remove(peer)
            peer.stop()
            _skip(skipped, peer.title, peer.variant, answer["reason"])
    for r in range(args.repeat):  # round-robin, starting one peer later each round
        for peer in peers[r % max(len(peers), 1):] + peers[:r % max(len(peers), 1)]:
            if peer.reason is not None:  # failed in an earlier round: not asked again
                continue
            time.sleep(args.settle)
            answer = peer.ask(args.timeout)
            if not answer.pop("ok"):  # one failure voids the peer's earlier runs too: no partial numbers
                peer.reason, peer.runs = f"failed in repeat {r + 1}: {answer['reason']}", []
            elif answer:
                peer.runs.append(answer)
    for peer in peers:
        peer.stop()
        if peer.reason:
            _skip(skipped, peer.title, peer.variant, peer.reason)
    return [p for p in peers if not p.reason]


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    from edgevlm.benchmarks.device import device_info

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgevlm_peers_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    model = peers_model.build(work, args.smoke)
    spec = {**model, "work": str(work), "new_tokens": args.new_tokens, "threads": args.threads,
            "warmup": args.warmup, "prompt_ids": peers_model.prompt_ids(model["llama_dir"], args.prompt_tokens),
            "tile_size": peers_model.tile_size(model["vlm_dir"]),
            "llama_convert": str(args.llama_convert) if args.llama_convert else None}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    skipped = []
    measured = _measure(_select(args, spec_path, work, skipped), args, spec_path, skipped)
    command = "python benchmarks/peers.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = peers_report.build(command, args, model, spec, [p.row() for p in measured], skipped,
                                device_info(), [round(load_before, 2), round(os.getloadavg()[0], 2)])
    paths = peers_report.write(report, args.out, "peers_smoke" if args.smoke else "peers")
    print(peers_report.markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
