"""One check for every config read from JSON: a mapping whose keys are all dataclass fields.

Configs arrive from edgevlm.json, checkpoints and the CLI; a typo in a key must fail with
its name rather than be silently ignored (or reach a constructor as a TypeError).
"""

from __future__ import annotations

from dataclasses import fields

from edgevlm.errors import ConfigError


def check_keys(cls, data, what: str, error: type[Exception] = ConfigError) -> dict:
    """Return `data` if it is a dict whose keys are fields of dataclass `cls`, else raise
    `error` naming `what` and the unknown keys."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise error(f"{what}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data
