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

from collections.abc import Iterable

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


class NonFiniteGuard:
    """Flags each update whose minibatch bound or gradient is non-finite, without a host sync.

    Before every `step()` of the watched optimizers it checks all gradients on the device (the
    kernel torch's AMP gradient scaler uses); `observe(bounds)` after the method's step adds the
    bound. With `skip=True` an update with a non-finite gradient is skipped: fused optimizers take
    the flag as `found_inf` and leave parameters and state untouched on the device (as under AMP);
    the others (foreach, on CUDA) read the flag on the host each step and drop the gradients, as
    AMP's scaler does for them. A non-finite bound always gives non-finite gradients here (NaN and
    inf propagate through backward), so it is skipped too. Without `skip`, `collect()` is the one
    host sync, once every `trainer.progress_every` steps.
    """

    def __init__(self, optimizers: Iterable[torch.optim.Optimizer], skip: bool, device: torch.device):
        self.skip = skip
        self._one = torch.ones((), device=device)
        self._bad_steps = torch.zeros((), device=device, dtype=torch.int64)  # steps with a non-finite bound or gradient
        self._clean_steps = torch.zeros((), device=device, dtype=torch.int64)  # steps before the first of them
        self._step_bad = torch.zeros((), device=device, dtype=torch.bool)
        self._pending = 0  # steps observed since the last collect()
        for optimizer in optimizers:
            optimizer.register_step_pre_hook(self._check_gradients)

    def _check_gradients(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        found = torch.zeros((), device=self._one.device)
        if grads:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, self._one)  # found = 1 if any is non-finite
        self._step_bad |= found.bool()
        if self.skip and getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.found_inf = found  # fused kernels skip the whole update on the device
        elif self.skip and found.item():  # host sync: only optimizers without the fused kernel
            for p in (p for group in optimizer.param_groups for p in group["params"]):
                p.grad = None

    def observe(self, bounds: torch.Tensor) -> None:
        """Count the step just taken, whose per-datapoint bounds are `bounds`."""
        bad = self._step_bad | ~torch.isfinite(bounds).all()
        self._bad_steps += bad
        self._clean_steps += self._bad_steps == 0
        self._step_bad = torch.zeros_like(self._step_bad)
        self._pending += 1

    def collect(self, step: int) -> tuple[int, int | None]:
        """(steps with a non-finite bound or gradient since the last call, the number of the first
        of them or None), given `step`, the number of the last step taken; resets the counters."""
        bad, clean = self._bad_steps.item(), self._clean_steps.item()
        first = step - self._pending + clean + 1 if bad else None
        self._bad_steps.zero_()
        self._clean_steps.zero_()
        self._pending = 0
        return bad, first
