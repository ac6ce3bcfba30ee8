"""The `optimizer` config group: Adagrad (the paper's, AEVB §5), Adam and SGD; and the guard that
watches every update for divergence (`trainer.on_nan`).

Adagrad's unstated details (PAPER.md §10.5) follow PyTorch: accumulator starting at 0, eps outside
the root, no extra learning-rate decay (its own growing accumulator is the "annealing"). The
multi-tensor path is used on every device: fused kernels on CPU (one pass over all parameters
instead of a Python loop per tensor; they also take the device-side "skip this update" flag that
`NonFiniteGuard` uses), foreach kernels on CUDA. The weight prior p(theta) of the MAP objective
enters as weight decay on the parameters it covers (AEVB §5, `estimators.prior_weight_decay`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .estimators import prior_parameters, prior_weight_decay


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter], device: torch.device,
                    prior: Iterable[torch.Tensor] = (), weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `params`; the parameters in `prior` get `weight_decay` x theta
    added to their gradient inside its kernel: the weight prior's term of the MAP objective
    (`estimators.prior_weight_decay`), with no pass of autograd over the weights."""
    params = list(params)
    in_prior = {id(p) for p in prior}
    groups = [{"params": [p for p in params if id(p) in in_prior], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in in_prior], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fast = {"fused": True} if device.type == "cpu" else {"foreach": True}
    if cfg.name == "adagrad":
        optimizer = torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, **fast)
    elif cfg.name == "adam":  # L2 weight decay, added to the gradient (not AdamW's decoupled decay)
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, betas=tuple(cfg.betas), **fast)
    elif cfg.name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of adagrad, adam, sgd")
    if cfg.name == "sgd" and cfg.momentum > 0:
        # Zero buffers equal PyTorch's first-step copy of the gradient (dampening 0), and stay
        # defined when the first update is skipped (the fused kernel leaves a lazy buffer unset).
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def map_optimizer(cfg, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], n_train: int, device: torch.device,
                  model_axes: int = 0, others: Iterable[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` of a MAP objective over `named_parameters` (and `others`, which
    the weight prior does not cover): p(theta) of `cfg.prior` on the parameters `prior.scope` names
    among them, as weight decay precision / N (AEVB §5). `model_axes`: as in `prior_parameters`."""
    named = list(named_parameters)
    prior = prior_parameters(named, cfg.prior.scope, model_axes)
    return build_optimizer(cfg.optimizer, [*(p for _, p in named), *others], device, prior,
                           prior_weight_decay(cfg.prior.precision, n_train))


@dataclass
class StepsReport:
    """What `NonFiniteGuard.collect` read back about the steps since its last call."""

    bad: int  # steps with a non-finite bound or gradient
    first_bad: int | None  # the number of the first of them
    mean_bound: float | None  # mean per-datapoint bound over the other steps (None if there were none)


class NonFiniteGuard:
    """Flags each update whose minibatch bound or gradient is non-finite, and keeps the running bound,
    all on the device: two kernels a step and no host sync.

    Before every `step()` of the watched optimizers it checks all gradients on the device (the
    kernel torch's AMP gradient scaler uses), writing this step's flag into a buffer; `observe(bounds)`
    after the method's step writes the bound's sum (float64: a sum of float32 values is non-finite
    exactly when one of them is) beside it. With `skip=True` an update with a non-finite gradient is
    skipped: fused optimizers take the flag as `found_inf` and leave parameters and state untouched
    on the device (as under AMP); the others (foreach, on CUDA) read the flag on the host each step
    and drop the gradients, as AMP's scaler does for them. A non-finite bound always gives non-finite
    gradients here (NaN and inf propagate through backward), so it is skipped too. `collect()` reads
    the buffers back, the one host sync, once every `trainer.progress_every` steps.
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer], skip: bool, device: torch.device, capacity: int = 64):
        self.skip = skip
        self._one = torch.ones((), device=device)
        optimizers = list(optimizers)
        self._params = [[p for group in o.param_groups for p in group["params"]] for o in optimizers]  # optimizer j's
        self._found = torch.zeros(capacity, len(optimizers), device=device)  # step i, optimizer j: 1 if a gradient was non-finite
        self._sums = torch.zeros(capacity, device=device, dtype=torch.float64)  # step i: sum of its per-datapoint bounds
        self._points = 0  # datapoints a step's bound sums over
        self._pending = 0  # steps observed since the last collect()
        for j, optimizer in enumerate(optimizers):
            optimizer.register_step_pre_hook(functools.partial(self._check_gradients, j))

    def _make_room(self) -> None:
        if self._pending == len(self._sums):  # more steps than the buffers hold between two collects: grow them
            self._found = torch.cat([self._found, torch.zeros_like(self._found)])
            self._sums = torch.cat([self._sums, torch.zeros_like(self._sums)])

    def _check_gradients(self, j: int, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        self._make_room()
        found = self._found[self._pending, j]  # several updates of one step (MCEM's M-step) share it
        grads = [p.grad for p in self._params[j] if p.grad is not None]
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)  # found = 1 if any is non-finite
        if self.skip and getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = found  # fused kernels skip the whole update on the device
        elif self.skip and found.item():  # host sync: only optimizers without the fused kernel
            for p in self._params[j]:
                p.grad = None

    def observe(self, bounds: torch.Tensor, found: torch.Tensor | None = None) -> None:
        """Count the step just taken, whose per-datapoint bounds are `bounds`; `found`: the flag of an
        update that checked its own gradients (a compiled one, whose optimizer runs no eager step)."""
        self._make_room()
        if found is not None:
            self._found[self._pending].copy_(found)
        torch.sum(bounds.detach().flatten(), 0, dtype=torch.float64, out=self._sums[self._pending])
        self._points = bounds.numel()
        self._pending += 1

    def collect(self, step: int) -> StepsReport:
        """The steps since the last call, given `step`, the number of the last step taken; resets."""
        n = self._pending
        sums, found = self._sums[:n], self._found[:n]
        bad = ~torch.isfinite(sums) | (found > 0).any(1)
        n_bad = int(bad.sum().item())
        first = step - n + 1 + int(bad.int().argmax().item()) if n_bad else None
        good = n - n_bad
        mean = torch.where(bad, 0, sums).sum().item() / (good * self._points) if good else None
        self._found.zero_()
        self._pending = 0
        return StepsReport(n_bad, first, mean)
