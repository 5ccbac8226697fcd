"""Small helpers shared by the peer adapters (peers_<name>.py). Standard library only: an adapter
must be importable, and able to say what it lacks, in an interpreter that has none of the runtimes."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path


def missing_modules(*modules: str, hint: str) -> str | None:
    """None when every module can be imported here, else a one-line reason naming the first
    that cannot (find_spec only: probing must not load a runtime, which can take seconds)."""
    for module in modules:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a dotted name whose parent package is absent
            found = False
        if not found:
            return f"{module} is not importable in {sys.executable} ({hint})"
    return None


def versions(*dists: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_tool(cmd: list[str], what: str, timeout: float = 3600) -> str:
    """Run a converter; on failure raise with its last output lines (its full output is already in
    the worker's log, because the worker's stdout and stderr both go there)."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)
    sys.stderr.write(done.stdout[-20000:] + done.stderr[-20000:])
    if done.returncode != 0:
        tail = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {tail[0][:200]}")
    return shlex.join(str(c) for c in cmd)


def shown(command: str, spec: dict) -> str:
    """A command as the report shows it: the run's temporary paths replaced by names."""
    for key, name in (("llama_dir", "LLAMA_DIR"), ("vlm_dir", "VLM_DIR"), ("work", "WORK")):
        if spec.get(key):
            command = command.replace(spec[key], name)
    return command.replace(sys.executable, "python")


def random_pixels(size: int, seed: int = 0):
    """One vision tile [1, 3, size, size], float32 in [-1, 1] (the normalised range)."""
    import numpy as np

    return np.random.default_rng(seed).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)


def last_json(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def log_tail(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return lines[-1][:200] if lines else "no output"
