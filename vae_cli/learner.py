"""One model in training: a method with its data, minibatch sampler and random streams.

`step()` is one step of Algorithm 1: X^M from the sampler, then the method's updates (eagerly by
`methods.take_step`, or compiled: `accel/compiled.py` swaps `step_fn`). `members()` gives the trained
model(s) as the evaluation sees them, and `state_dict()` everything a checkpoint must hold to continue
exactly. `accel/stack.py` has the same face for a stack of K models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import Dataset, MinibatchSampler
from .methods import Capabilities, Method, Minibatch, Step, load_optimizer_state, optimizer_state, take_step
from .models import VAE


@dataclass
class Member:
    """A model as evaluated: its seed offset in a stack (0 alone), its bound and the row's extra fields."""

    model: VAE
    offset: int
    bound: Callable
    fields: Callable[[], dict]


@dataclass
class Learner:
    method: Method
    data: Dataset
    sampler: MinibatchSampler
    generators: dict[str, torch.Generator]
    step_fn: Callable[[Method, Minibatch, torch.Generator], Step] = take_step  # accel/compiled.py gives a compiled one

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    @property
    def skip_nonfinite(self) -> bool:
        return self.method.skip_nonfinite

    @property
    def capabilities(self) -> Capabilities:
        return self.method.capabilities

    def step(self) -> Step:
        idx = self.sampler.next(self.generators["data"], self.data.train.device)  # X^M <- random minibatch
        batch = Minibatch(self.data.minibatch(idx, self.generators["noise"]), idx)
        return self.step_fn(self.method, batch, self.generators["noise"])

    def members(self) -> list[Member]:
        return [Member(self.method.model, 0, self.method.bound, self.method.evaluation_fields)]

    def state_dict(self) -> dict:
        return {"model": self.method.model.state_dict(), "method": optimizer_state(self.method),
                "sampler": self.sampler.state_dict(), "rng": {k: g.get_state() for k, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.method.model.load_state_dict(state["model"])
        load_optimizer_state(self.method, state["method"])
        self.sampler.load_state_dict(state["sampler"], self.data.train.device)
        for name, g in self.generators.items():
            g.set_state(state["rng"][name].cpu())
