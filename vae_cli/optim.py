"""The `optimizer` and `prior` groups as torch.optim objects, the one gradient-ascent update every
method takes, and the guard that watches the updates for divergence (`trainer.on_nan`).

Adagrad is the paper's optimizer (AEVB §5); Adam and SGD are there for comparison. Where the paper is
silent the author's code is followed (PAPER.md §12.1): the accumulator starts at 1e-8, which puts his
1e-8 inside the root (`initial_accumulator_value`), and for the first `warmup_steps` updates the
stepsize is 0, so the squared gradients accumulate while no parameter moves (a `LambdaLR` schedule).
The weight prior p(theta) = N(0, I / precision) of the MAP objective is the optimizer's weight decay
precision / N on the parameters it covers (`weight_prior`, `estimators.map_objective`).
On CPU the fused kernels run (one pass over all parameters), on CUDA the foreach ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

Schedule = torch.optim.lr_scheduler.LRScheduler


def weight_prior(named_parameters: Iterable[tuple[str, torch.Tensor]], scope: str) -> list[torch.Tensor]:
    """The parameters p(theta) covers: `weights` the weight matrices (as [K]), `all` every parameter,
    `none` none (maximum likelihood) (PAPER.md §10.4)."""
    if scope == "none":
        return []
    if scope == "weights":
        return [p for name, p in named_parameters if name.endswith("weight")]
    if scope == "all":
        return [p for _, p in named_parameters]
    raise ValueError(f"unknown prior scope {scope}; choose one of weights, all, none")


def build_optimizer(cfg, params: Iterable[torch.Tensor], device: torch.device, decayed: Iterable[torch.Tensor] = (),
                    weight_decay: float = 0.0) -> tuple[torch.optim.Optimizer, Schedule]:
    """The optimizer `cfg` describes over `params` and its stepsize schedule (the warm-up); the
    parameters in `decayed` get `weight_decay` x theta added to their gradient inside its kernel."""
    params = list(params)
    in_prior = {id(p) for p in decayed}
    groups = [{"params": [p for p in params if id(p) in in_prior], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in in_prior], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fast = {"fused": True} if device.type == "cpu" else {"foreach": True}
    if cfg.name == "adagrad":
        optimizer = torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, initial_accumulator_value=cfg.initial_accumulator_value, **fast)
    elif cfg.name == "adam":  # L2 weight decay added to the gradient, as the prior's gradient (not AdamW)
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, betas=tuple(cfg.betas), **fast)
    elif cfg.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)
    else:
        raise ValueError(f"unknown optimizer {cfg.name}; choose one of adagrad, adam, sgd")
    if cfg.name == "sgd" and cfg.momentum > 0:
        for p in params:  # zeros equal torch's first-step copy of the gradient (dampening 0) and stay defined
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    warmup = cfg.warmup_steps
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 0.0 if done < warmup else 1.0)


def map_optimizer(cfg, named_parameters: Iterable[tuple[str, torch.Tensor]], n_train: int, device: torch.device,
                  others: Iterable[torch.Tensor] = ()) -> tuple[torch.optim.Optimizer, Schedule]:
    """`cfg.optimizer` for a MAP objective over `named_parameters` (and `others`, outside the weight
    prior): p(theta) of `cfg.prior` on the parameters `prior.scope` names, as weight decay precision / N."""
    named = list(named_parameters)
    decayed = weight_prior(named, cfg.prior.scope)
    return build_optimizer(cfg.optimizer, [*(p for _, p in named), *others], device, decayed, cfg.prior.precision / n_train)


def nonfinite_gradient(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """1 if any gradient of the optimizer's parameters holds a NaN or an infinity, else 0, on the device
    (no host sync). The sum of all elements is non-finite when one is (NaN and inf propagate), or when it
    overflows, which is divergence too; a sum is the cheapest reduction (~40x a max-abs on a CPU)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return (~torch.isfinite(torch.stack([g.sum() for g in grads]).sum())).float()


def apply_gradients(optimizer: torch.optim.Optimizer, schedule: Schedule, skip_nonfinite: bool) -> torch.Tensor:
    """Theta <- update with g (Algorithm 1) from the gradients in `.grad`; returns the non-finite flag.
    With `skip_nonfinite` a flagged update is not taken (one host read of the flag)."""
    bad = nonfinite_gradient(optimizer)
    if not (skip_nonfinite and bad.item()):
        optimizer.step()
        schedule.step()
    return bad


def ascend(objective: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: Schedule, skip_nonfinite: bool) -> torch.Tensor:
    """One update of gradient ascent on `objective` over the optimizer's parameters."""
    optimizer.zero_grad(set_to_none=True)
    (-objective).backward()
    return apply_gradients(optimizer, schedule, skip_nonfinite)


@dataclass
class StepsReport:
    """What `NonFiniteGuard.collect` read back about the steps since its last call."""

    bad: int  # steps with a non-finite bound or gradient
    first_bad: int | None  # the number of the first of them
    mean_bound: float | None  # mean per-datapoint bound over the other steps (None if there were none)
    good: int = 0  # the number of those other steps


class NonFiniteGuard:
    """Keeps each step's non-finite flag and the sum of its shown bounds on the device, and reads them
    back in one host sync per `collect()` (every `trainer.progress_every` steps). A step is bad when
    its bound is non-finite (the sum in float64 is non-finite exactly when a value is) or one of its
    updates had a non-finite gradient (`apply_gradients`). Beside them it keeps, step by step in
    order, the total of the good steps' mean bounds and their number (`running`): the author's train
    curve, the same however often the host reads it."""

    def __init__(self, device: torch.device, capacity: int = 64, running: tuple[float, int] = (0.0, 0)):
        self._found = torch.zeros(capacity, device=device)
        self._sums = torch.zeros(capacity, device=device, dtype=torch.float64)
        self._running = torch.tensor(running, device=device, dtype=torch.float64)  # (total of mean bounds, good steps)
        self._points = 0  # datapoints a step's bound sums over
        self._pending = 0  # steps observed since the last collect()

    def observe(self, bounds: torch.Tensor, nonfinite: torch.Tensor) -> None:
        if self._pending == len(self._sums):  # more steps than the buffers hold between two collects
            self._found = torch.cat([self._found, torch.zeros_like(self._found)])
            self._sums = torch.cat([self._sums, torch.zeros_like(self._sums)])
        self._found[self._pending] = nonfinite
        total = self._sums[self._pending]
        torch.sum(bounds.detach().flatten(), 0, dtype=torch.float64, out=total)
        good = torch.isfinite(total) & (nonfinite == 0)
        self._running += torch.stack([torch.where(good, total / bounds.numel(), 0.0), good.double()])
        self._points = bounds.numel()
        self._pending += 1

    def running(self) -> tuple[float, int]:
        """The total of the good steps' mean bounds since the last `restart_running`, and their number."""
        total, steps = self._running.tolist()
        return total, int(steps)

    def restart_running(self) -> None:
        self._running.zero_()

    def collect(self, step: int) -> StepsReport:
        """The steps since the last call, given `step`, the number of the last step taken; resets."""
        n = self._pending
        sums, found = self._sums[:n], self._found[:n]
        bad = ~torch.isfinite(sums) | (found > 0)
        n_bad = int(bad.sum().item())
        first = step - n + 1 + int(bad.int().argmax().item()) if n_bad else None
        good = n - n_bad
        mean = torch.where(bad, 0, sums).sum().item() / (good * self._points) if good else None
        self._found.zero_()
        self._pending = 0
        return StepsReport(n_bad, first, mean, good)
