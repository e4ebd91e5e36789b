"""Choosing where and how the autoencoder runs: device, precision and CPU threads."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from latentcomm.errors import DeviceError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """Map a ``--device`` value to a torch device: auto means cuda, else mps, else cpu.

    Asking for a device this machine lacks is a user error (DeviceError), not a silent fallback:
    someone who typed ``--device cuda`` wants to know their GPU isn't being used.
    """
    if name not in DEVICES:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    mps_ok = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not mps_ok:
        raise DeviceError("--device mps requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when bf16 convolutions beat fp32 here: CPUs with AMX tiles.

    AVX512-BF16 alone is not enough: measured on an AMD EPYC with it (2026-11-26, torch 2.13), a
    3x3 128-channel convolution takes 0.68 s in bf16 against 0.08 s in fp32 (oneDNN has no fast
    bf16 convolution kernels for it), so ``auto`` picks fp32 there.
    """
    return "amx_bf16" in cpu_flags()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Map ``--precision`` to the autocast dtype used for the autoencoder's compute.

    auto: bf16 on CPUs with AMX, fp16 on CUDA, fp32 otherwise (AVX512-BF16 without AMX included,
    where bf16 convolutions are slower than fp32; MPS too, where fp16 VAE decodes are known to
    overflow for some models).
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("--precision fp16 is not supported on CPU; use bf16 or fp32")
    return dtype


def configure_threads() -> int:
    """Use every core this process may run on (cgroup/affinity aware) for intra-op parallelism.

    An explicit ``OMP_NUM_THREADS`` wins: whoever runs several of these processes side by side
    (a test runner's workers, a fleet of receivers on one host) sets it to keep their thread pools
    from oversubscribing the cores, which costs far more than the threads gain.
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return torch.get_num_threads()
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
