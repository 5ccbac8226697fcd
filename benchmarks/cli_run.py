"""Run one `edgevlm` CLI command from a benchmark script, echoed and recorded.

The benchmarks drive the real CLI (a subprocess), so each recorded command is one a user can
repeat as it stands.
"""

from __future__ import annotations

import subprocess
import sys
import time


def edgevlm_cli(cmd: list, log: list[str] | None = None, check: bool = True) -> float | str:
    """Run `edgevlm CMD...`; returns its wall time in seconds, or (check=False) its last
    one-line error when it fails. check=True: a failure ends the script with the command."""
    text = " ".join(map(str, cmd))
    print(f"$ edgevlm {text}", flush=True)
    if log is not None:
        log.append(text)
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "edgevlm.cli", *map(str, cmd)], stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode:
        if check:
            raise SystemExit(f"failed: edgevlm {text}")
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        return errors[-1] if errors else f"exit {done.returncode}"
    return time.time() - t0
