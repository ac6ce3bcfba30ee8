"""The jobs the console scripts run: training (`train`), likelihood estimation (`evaluate`) and the
report of a sweep (`report`), and what they share about the machine they run on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import UserError


def configure_cpu(threads: int | None, flush_denormals: bool) -> None:
    """torch's intra-op threads (`threads`; None keeps torch's default), and whether the CPU reads and
    writes subnormal floats (|v| < 1.2e-38 in float32) as 0 (x86's FTZ and DAZ flags).

    The weight prior p(theta) pulls the weights of pixels that are never lit (MNIST's border) toward 0,
    into the subnormal range, where some x86 cores compute through a slow microcode path (docs/design.md).
    Flushing changes no bound: those weights multiply pixels that are 0. Worker threads take the flags
    when they start, so this must run before torch's first parallel operation, as vae-train and
    vae-eval call it; the flags stay set after the run.
    """
    torch.set_flush_denormal(flush_denormals)
    if threads:
        torch.set_num_threads(threads)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM or taskset allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def cpu_threads(threads: int | None, flush_denormals: bool, small_tensors: bool = False) -> Iterator[int]:
    """torch's intra-op threads for one job, put back afterwards: `threads`, or with None one for small
    tensors (HMC chains, where more threads only add synchronisation) and otherwise the cores this
    process may use, at most torch's own default (its physical cores, or OMP_NUM_THREADS)."""
    previous = torch.get_num_threads()
    threads = threads or (1 if small_tensors else min(previous, usable_cores()))
    configure_cpu(threads, flush_denormals)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
