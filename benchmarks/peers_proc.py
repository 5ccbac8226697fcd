"""The parent's side of the worker protocol (benchmarks/peers_worker.py is the child's): start a
peer's worker in its interpreter, ask it for one run at a time, and turn every way it can fail
(non-zero exit, death mid-run, a hang, garbage on stdout) into a one-line reason."""

from __future__ import annotations

import importlib
import select
import subprocess
from pathlib import Path

from peers_util import last_json, log_tail

WORKER = Path(__file__).resolve().parent / "peers_worker.py"


class Peer:
    """One table row: an adapter at one precision, run by one interpreter, as one worker process."""

    def __init__(self, adapter: str, variant: str, python: str, versions: dict, work: Path, env: dict):
        self.adapter, self.variant, self.python, self.versions, self.env = adapter, variant, python, versions, env
        module = importlib.import_module(f"peers_{adapter}")
        self.title = getattr(module, "TITLES", {}).get(variant, module.TITLE)  # a variant may be another tool
        self.dir = work / "peers" / f"{adapter}-{variant}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "worker.log"
        self.proc, self.runs, self.info, self.prepared, self.reason = None, [], {}, {}, None

    def call(self, command: str, spec: Path, timeout: float) -> dict:
        """A one-shot worker command (prepare); its JSON line, or the reason it gave none."""
        with open(self.log, "a") as log:
            try:
                done = subprocess.run([self.python, WORKER, command, self.adapter, self.variant, spec, self.dir],
                                      stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout, env=self.env)
            except subprocess.TimeoutExpired:
                return {"ok": False, "reason": f"{command} took over {timeout:.0f} s"}
        why = f"{command} exited {done.returncode}: {log_tail(self.log)}"
        return last_json(done.stdout) or {"ok": False, "reason": why}

    def start(self, spec: Path) -> None:
        with open(self.log, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([self.python, WORKER, "serve", self.adapter, self.variant, spec, self.dir],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         bufsize=1, env=self.env)

    def read(self, timeout: float) -> dict:
        """The worker's next JSON line; a hang or death becomes a failure with the log's last line."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        if line is None:
            return {"ok": False, "reason": f"no answer within {timeout:.0f} s"}
        if not line:  # EOF: the worker is gone
            return {"ok": False, "reason": f"worker died (exit {self.proc.wait()}): {log_tail(self.log)}"}
        return last_json(line) or {"ok": False, "reason": f"unreadable answer {line.strip()[:100]!r}"}

    def ask(self, timeout: float) -> dict:
        try:
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"ok": False, "reason": f"worker died (exit {self.proc.wait()}): {log_tail(self.log)}"}
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the worker's loop ends
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def row(self) -> dict:
        return {"adapter": self.adapter, "variant": self.variant, "title": self.title, "python": self.python,
                "versions": self.versions, "info": self.info, "runs": self.runs, **self.prepared}


def probe(adapter: str, pythons: list[str], spec: Path) -> tuple[str | None, dict | str]:
    """The first interpreter that has the adapter's runtime, with its versions; else every reason."""
    reasons = []
    for python in pythons:
        done = subprocess.run([python, WORKER, "probe", adapter, spec], capture_output=True, text=True, check=False)
        answer = last_json(done.stdout) or {"ok": False, "reason": f"probe failed: {done.stderr.strip()[-200:]}"}
        if answer["ok"]:
            return python, answer["versions"]
        reasons.append(answer["reason"])
    return None, " | ".join(reasons)
