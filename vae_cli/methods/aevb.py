"""AEVB, Algorithm 1: ascend the SGVB estimate of the MAP objective in theta and phi jointly (AEVB §2.3, §5).

repeat: X^M <- a random minibatch (the loop); eps <- random samples from p(eps) (`draw`);
g <- grad_{theta, phi} of eq. (8) at X^M and eps (`terms`, the estimator's per-datapoint bounds);
theta, phi <- update with g (Adagrad, the paper's; `methods.take_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..estimators import get_estimator, noise
from ..models import VAE
from ..optim import Schedule, map_optimizer
from . import Capabilities, Defaults, Minibatch, Update

NAME = "aevb"
CAPABILITIES = Capabilities(bound=True, compile=True, stack=True)


@dataclass
class AEVB(Defaults):
    model: VAE
    n_train: int  # N
    optimizers: dict[str, torch.optim.Optimizer]
    schedules: dict[str, Schedule]
    skip_nonfinite: bool
    estimator: Callable[..., torch.Tensor]  # sgvb_a (eq. 6) or sgvb_b (eq. 7)
    n_samples: int  # L
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def updates(self) -> list[Update]:
        return [Update("theta_phi", self.terms, self.draw)]

    def draw(self, model: VAE, batch: Minibatch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.x, noise(model, batch.x, self.n_samples, generator)  # eps ~ p(eps), (L, M, J)

    def terms(self, model: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = self.estimator(model, x, eps)  # (M,), L~(theta, phi; x_i) at eps
        return bounds, bounds


def build(cfg, model: VAE, n_train: int, device: torch.device, generator: torch.Generator) -> AEVB:
    optimizer, schedule = map_optimizer(cfg, model.named_parameters(), n_train, device)
    return AEVB(model, n_train, {"theta_phi": optimizer}, {"theta_phi": schedule}, cfg.trainer.on_nan == "skip_batch",
                get_estimator(cfg.estimator.name), cfg.estimator.n_samples)
