"""The random streams of a run, for one model or for a stack of K models trained side by side.

A run with `seed=s` draws its initial weights from a generator seeded s, its data order from one
seeded s + 1 and its noise (eps of the reparameterization, AEVB §2.4; dynamic binarization;
wake-sleep's fantasies) from one seeded s + 2. A stack of K models (`trainer.n_models=K`,
`stacked.py`) gives model k the streams of a separate run with `seed=s+k`: a `GeneratorStack`
holds the K generators of one stream, and the draws below take each model's slice from its own
generator, with the shape and in the order a separate run draws it, stacked along the model axis.
With a plain `torch.Generator` they are exactly the torch call a single run makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class GeneratorStack:
    """One stream of K models: `generators[k]` is model k's; checkpointed as one (K, n) state."""

    generators: list[torch.Generator]

    def __len__(self) -> int:
        return len(self.generators)

    def get_state(self) -> torch.Tensor:
        return torch.stack([g.get_state() for g in self.generators])  # (K, n) bytes

    def set_state(self, state: torch.Tensor) -> None:
        if state.ndim != 2 or state.shape[0] != len(self.generators):
            raise ValueError(f"a random state of shape {tuple(state.shape)} does not fit a stack of {len(self.generators)} generators")
        for g, row in zip(self.generators, state):
            g.set_state(row.clone())  # a row of its own: set_state of a view at an offset crashes torch 2.13


Generator = torch.Generator | GeneratorStack


def randn(shape: Sequence[int], generator: Generator, model_axis: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard-normal draws of `shape`; from a stack, `shape[model_axis]` = K and model k draws the rest."""
    if not isinstance(generator, GeneratorStack):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    per_model = (*shape[:model_axis], *shape[model_axis + 1 :])
    return torch.stack([torch.randn(per_model, generator=g, device=device, dtype=dtype) for g in generator.generators], model_axis)


def bernoulli(probs: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Binary draws x ~ Bernoulli(probs); from a stack, model k's probabilities are `probs[k]`."""
    if not isinstance(generator, GeneratorStack):
        return torch.bernoulli(probs, generator=generator)
    return torch.stack([torch.bernoulli(p, generator=g) for p, g in zip(probs, generator.generators, strict=True)])


def randperm(n: int, generator: Generator) -> torch.Tensor:
    """A permutation of 0..n-1, (n,); from a stack, one per model, (K, n)."""
    if not isinstance(generator, GeneratorStack):
        return torch.randperm(n, generator=generator)
    return torch.stack([torch.randperm(n, generator=g) for g in generator.generators])


def training_generators(seed: int, n_models: int, device: torch.device) -> dict[str, Generator]:
    """The data-order (CPU) and noise (on `device`) streams of a run: seeds s + 1 and s + 2, and for
    a stack model k's s + k + 1 and s + k + 2; one model gets plain generators, as it always has."""

    def stream(offset: int, on: torch.device) -> Generator:
        gens = [torch.Generator(device=on).manual_seed(seed + k + offset) for k in range(n_models)]
        return gens[0] if n_models == 1 else GeneratorStack(gens)

    return {"data": stream(1, torch.device("cpu")), "noise": stream(2, device)}
