"""Load one of our optional C kernel libraries (built by setup.py, called with ctypes)."""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path
from typing import Callable


def load_library(name: str, what: str, declare: Callable[[ctypes.CDLL], None], supported: str,
                 lacks: str) -> tuple[ctypes.CDLL | None, str]:
    """(library, "ok") or (None, why not). name: the extension's module name beside this file;
    what: how to call it in a message; declare(lib) sets its functions' argtypes; supported: the
    library's function that returns 1 when this CPU runs the kernel; lacks: the message when not."""
    here = Path(__file__).parent
    found = [here / (name + s) for s in importlib.machinery.EXTENSION_SUFFIXES if (here / (name + s)).is_file()]
    if not found:
        return None, f"the {what} library was not built (no C compiler when edgevlm was installed)"
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as exc:
        return None, f"the {what} library does not load ({str(exc)[:120]})"
    declare(lib)
    check = getattr(lib, supported)
    check.restype = ctypes.c_int
    if not check():
        return None, lacks
    return lib, "ok"
