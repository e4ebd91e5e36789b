"""Where and when a benchmark ran, stored with its numbers.

The README's tables are written from the JSON files (`benchmarks/report.py`), so the date and the CPU
in their captions must come from the run too, not from whoever edits the README.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (speeds are only comparable on the same one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> str:
    """'AMX', 'AVX512-BF16, no AMX', ... or '': what decides the bf16 (and fp32) speed of this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16, no AMX"
    if "avx512f" in flags:
        return "AVX-512, no BF16"
    if " avx2" in flags:
        return "AVX2, no AVX-512"
    return ""


def run_meta() -> dict:
    """Date, CPU and torch of this run, for the JSON file's top level."""
    import os

    import torch

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
    }
