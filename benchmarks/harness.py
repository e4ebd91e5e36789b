"""What every benchmark shares: where and when it ran (stored with its numbers) and writing its results.

The documents' tables are written from the JSON files (`benchmarks/report.py`), so the date and the
CPU in their captions must come from the run too, not from whoever edits the documents.

The benchmarks run from the checkout's root as ``python -m benchmarks.NAME`` and import ``latentcomm``
as any user's code does (the installed package, or the checkout's own from its root), this module,
and nothing by file path.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

#: Where the runs the documents quote are kept.
RESULTS = Path(__file__).resolve().parent / "results"


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
    import torch

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
    }


def write_results(path: Path, result: dict, indent: int = 1) -> None:
    """Write a run's results as JSON (creating the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    print(f"wrote {path}")
