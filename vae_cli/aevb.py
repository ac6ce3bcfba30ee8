"""One AEVB update, the body of Algorithm 1: ascend the SGVB estimate of the MAP objective.

Every training method (AEVB here; wake-sleep, MCEM and full VB beside it) is a small object with
the same face, so the one training loop in `train.py` drives them all:
`step(x, idx, generator) -> (M,)` updates the parameters on the minibatch `x` (rows `idx` of the
training set) and returns a detached per-datapoint value to display; `state_dict()` /
`load_state_dict()` carry the optimizer and any per-method state through checkpoints; `model` is
what evaluation and figures use; `has_encoder` says whether the method learns a q(z|x), i.e.
whether the loop can evaluate a lower bound (MCEM has none and logs log p(x) estimates instead).
A method whose update checks its own gradients on the device (under `trainer.compile`, where the
optimizer never runs its eager `step()`) leaves that step's flag in `nonfinite_gradient` for the
loop's divergence guard; eagerly it stays None and the guard's optimizer hook checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from .compiled_update import build_update
from .estimators import Estimator, get_estimator, noise
from .models import VAE
from .optimizers import map_optimizer


@dataclass
class AEVB:
    model: VAE
    optimizer: torch.optim.Optimizer
    estimator: Estimator
    n_samples: int  # L
    n_train: int  # N
    update: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]  # eager or compiled (trainer.compile)
    nonfinite_gradient: torch.Tensor | None = None  # the compiled update's guard flag for its last step
    has_encoder: ClassVar[bool] = True

    def step(self, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        eps = noise(self.model, x, self.n_samples, generator)  # eps ~ p(eps) (Algorithm 1)
        bounds, self.nonfinite_gradient = self.update(x, eps)  # ascend eq. (8) / N at eps (compiled_update.py)
        return bounds

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def bounds_twice(estimator: Estimator):
    """The estimator as the update's terms: its bounds are the objective's terms and what the loop shows."""

    def terms(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = estimator(model, x, eps)  # (M,), eq. (6) or (7)
        return bounds, bounds

    return terms


def build(cfg, model: VAE, n_train: int, device: torch.device) -> AEVB:
    """AEVB over the encoder's phi and the decoder's theta jointly (AEVB §5); `trainer.compile`
    compiles its whole update."""
    estimator = get_estimator(cfg.estimator.name)
    optimizer = map_optimizer(cfg, model.named_parameters(), n_train, device, model.model_axes)
    return AEVB(
        model=model,
        optimizer=optimizer,
        estimator=estimator,
        n_samples=cfg.estimator.n_samples,
        n_train=n_train,
        update=build_update(cfg, model, optimizer, bounds_twice(estimator), n_train),
    )
