"""What machine a benchmark ran on: CPU, cores, ISA flags, RAM, OS, library versions."""

from __future__ import annotations

import os
import platform


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def device_info() -> dict:
    import numpy
    import onnxruntime

    model, flags = _cpuinfo()
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni"),
                                   ("AVX-VNNI", "avx_vnni"), ("AVX-512 BF16", "avx512_bf16"), ("AMX", "amx_tile"), ("NEON", "asimd"),
                                   ("dotprod", "asimddp")) if flag in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
