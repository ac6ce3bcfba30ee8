"""The training methods: AEVB (Algorithm 1) and the paper's baselines, behind one small interface.

A method is what one step of the training loop does to the parameters. It says so as a list of
`Update`s: each draws the random inputs it needs (no gradient), forms per-datapoint terms of its
objective, and ascends (1/N) eq. (8) of them with one of its optimizers (AEVB: one update of theta and
phi on the SGVB estimate; wake-sleep: a wake update of theta, then a sleep update of phi; MCEM: an HMC
E-step, then five updates of theta). `take_step` runs them eagerly, with autograd and torch.optim;
`accel/` runs the same updates compiled or for a stack of models, from outside. Every method also
carries its `Capabilities`, its optimizers with their stepsize schedules, any state of its own
(`extra_state`) and how its train/test bound is evaluated (`bound`, `evaluation_fields`).

`METHODS` maps each name of the `method` config group to its module's `build` and capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Protocol

import torch

from ..estimators import map_objective
from ..evaluation import BoundEstimate, evaluate_bound
from ..models import VAE
from ..optim import Schedule, ascend


class Minibatch(NamedTuple):
    """X^M: the datapoints `x` (M, D) of one step and their rows `idx` (M,) in the training set."""

    x: torch.Tensor
    idx: torch.Tensor


@dataclass(frozen=True)
class Update:
    """One gradient-ascent update of a step.

    `draw(model, batch, generator) -> inputs` draws the update's random inputs without gradient
    (eps ~ p(eps), wake-sleep's fantasies, MCEM's HMC samples); `terms(model, *inputs) -> (terms,
    shown)` gives the per-datapoint terms of the objective, (M,), and what to show for them; the
    update ascends (1/N) eq. (8) of the terms with `optimizers[optimizer]`, `repeats` times on the
    same inputs (MCEM's M-step).
    """

    optimizer: str
    terms: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    draw: Callable[[VAE, Minibatch, torch.Generator], tuple[torch.Tensor, ...]]
    repeats: int = 1


@dataclass(frozen=True)
class Capabilities:
    bound: bool  # learns a q(z|x), so the loop evaluates a lower bound (else App. D estimates of log p(x))
    compile: bool  # its updates can be compiled (speed.compile; accel/compiled.py)
    stack: bool  # K models can be trained as one stack (speed.n_models; accel/stack.py)


class Method(Protocol):
    model: VAE
    n_train: int  # N
    optimizers: dict[str, torch.optim.Optimizer]
    schedules: dict[str, Schedule]  # each optimizer's stepsize schedule (the warm-up)
    skip_nonfinite: bool  # trainer.on_nan=skip_batch: an update with a non-finite gradient is not taken
    capabilities: ClassVar[Capabilities]

    def updates(self) -> list[Update]: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, state: dict) -> None: ...

    def bound(self, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> BoundEstimate: ...

    def evaluation_fields(self) -> dict: ...


class Defaults:
    """What most methods share: no state beyond optimizers, the bound of `model` as evaluated."""

    model: VAE

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def bound(self, x: torch.Tensor, estimator: str, n_samples: int, batch_size: int, generator: torch.Generator) -> BoundEstimate:
        return evaluate_bound(self.model, x, estimator, n_samples, batch_size, generator)

    def evaluation_fields(self) -> dict:
        return {}


class Step(NamedTuple):
    shown: torch.Tensor  # (M,) per-datapoint values of the step's first update, detached
    nonfinite: torch.Tensor  # 1 if one of its updates had a non-finite gradient


def draw_inputs(method: Method, update: Update, batch: Minibatch, generator: torch.Generator) -> tuple:
    return update.draw(method.model, batch, generator)


def eager_update(method: Method, update: Update, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascend (1/N) eq. (8) of the update's terms with autograd and its torch.optim optimizer."""
    terms, shown = update.terms(method.model, *inputs)
    objective = map_objective(terms, method.n_train)  # eq. (8) / N; + log p(theta) / N as weight decay
    return shown, ascend(objective, method.optimizers[update.optimizer], method.schedules[update.optimizer], method.skip_nonfinite)


def take_step(method: Method, batch: Minibatch, generator, draw=draw_inputs, apply=eager_update) -> Step:
    """One step of the loop: each update draws its inputs, then ascends its objective, in order.
    Eager by default; `accel/` passes a compiled `apply`, or a stack's `draw` and `apply`."""
    shown, bad = None, None
    for update in method.updates():
        inputs = draw(method, update, batch, generator)
        for _ in range(update.repeats):
            values, flag = apply(method, update, inputs)
            bad = flag if bad is None else torch.maximum(bad, flag)
            shown = values.detach() if shown is None else shown
    return Step(shown, bad)


def optimizer_state(method: Method) -> dict:
    """What a checkpoint keeps of a method: its optimizers, their schedules and its own state."""
    return {"optimizers": {k: o.state_dict() for k, o in method.optimizers.items()},
            "schedules": {k: s.state_dict() for k, s in method.schedules.items()}, "extra": method.extra_state()}


def load_optimizer_state(method: Method, state: dict) -> None:
    for key, optimizer in method.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
        method.schedules[key].load_state_dict(state["schedules"][key])
    method.load_extra_state(state["extra"])


@dataclass(frozen=True)
class Entry:
    build: Callable  # build(cfg, model, n_train, device, generator) -> Method
    capabilities: Capabilities


def _registry() -> dict[str, Entry]:
    from . import aevb, full_vb, mcem, wake_sleep

    return {m.NAME: Entry(m.build, m.CAPABILITIES) for m in (aevb, wake_sleep, mcem, full_vb)}


METHODS: dict[str, Entry] = _registry()
