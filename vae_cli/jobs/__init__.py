"""The jobs the console scripts run: training (`train`), likelihood estimation (`evaluate`) and the
report of a sweep (`report`), and what they share about the machine they run on."""

from __future__ import annotations

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
