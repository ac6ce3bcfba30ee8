"""The random streams of a run, owned by the job that runs it (STYLE: randomness is an argument).

A run with `seed=s` draws its initial weights from a generator seeded s, its data order from one
seeded s + 1 (on the CPU), its noise (eps of the reparameterization, AEVB §2.4; dynamic binarization;
wake-sleep's fantasies; HMC) from one seeded s + 2, and MCEM's initial chains from one seeded s + 3.
Every state is checkpointed, so a resumed run draws what an uninterrupted one draws. Evaluations
draw from a generator of the seed and the sample count alone, so they never disturb training.
"""

from __future__ import annotations

import torch

STREAMS = {"data": 1, "noise": 2, "chains": 3}  # seed offsets


def init_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def training_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The data-order (CPU), noise and chain-initialisation (on `device`) streams of a run."""
    return {name: torch.Generator(device="cpu" if name == "data" else device).manual_seed(seed + offset)
            for name, offset in STREAMS.items()}


def evaluation_generator(device: torch.device, seed: int, samples: int) -> torch.Generator:
    """A generator for the evaluation at `samples`: a pure function of the seed and the counter,
    so evaluations never disturb the training noise and a resumed run evaluates identically."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + samples)
