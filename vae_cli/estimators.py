"""The SGVB estimators of the lower bound (AEVB §2.3) and the MAP objective they are used in (§5).

Each estimator is a pure function `(model, x, eps) -> (M,)`: one stochastic estimate of
L(theta, phi; x^(i)) per datapoint at the given noise eps^(l) ~ p(eps) (`noise`), differentiable in
theta and phi through the reparameterization z = mu + sigma * eps, as Algorithm 1 separates them
("eps <- random samples from p(eps); g <- grad L~(theta, phi; X^M, eps)"). No randomness, no
reduction, no backward, no logging: the caller draws eps and forms the minibatch estimator eq. (8)
once. Being pure, an estimator can be differentiated by torch.func and compiled with its update
(`compiled_update.py`, `trainer.compile`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from . import generators
from .generators import Generator

Estimator = Callable[..., torch.Tensor]


def noise(model, x: torch.Tensor, n_samples: int, generator: Generator | None) -> torch.Tensor:
    """eps^(l) ~ p(eps) = N(0, I) for every datapoint of `x`: (L, M, J), or (L, K, M, J) for a stack
    of K models (x (K, M, D), each model's slice from its own generator). The same draw as
    `DiagonalGaussian.rsample` of q(z|x) makes: the encoder itself draws nothing."""
    shape = (n_samples, *x.shape[:-1], model.latent_dim)
    return generators.randn(shape, generator, 1, x.device, x.dtype)


def sgvb_a(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Generic estimator L^A, AEVB eq. (6): mean over l of log p(x, z_l) - log q(z_l|x)."""
    q = model.encoder(x)
    z = q.reparameterize(eps)  # (L, M, J)
    return (model.log_joint(x, z) - q.log_prob(z)).mean(0)


def sgvb_b(model, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Estimator L^B, AEVB eq. (7)/(10): -KL(q(z|x) || p(z)) in closed form (App. B) plus the
    mean over l of log p(x|z_l)."""
    q = model.encoder(x)
    z = q.reparameterize(eps)  # (L, M, J)
    return model.decoder(z).log_prob(x).mean(0) - q.kl_to_standard_normal()


ESTIMATORS: dict[str, Estimator] = {"sgvb_a": sgvb_a, "sgvb_b": sgvb_b}


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise KeyError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def estimate(estimator: Estimator, model, x: torch.Tensor, n_samples: int, generator: Generator | None) -> torch.Tensor:
    """`estimator` at L fresh noise draws eps ~ p(eps) per datapoint, (M,): draw, then estimate."""
    return estimator(model, x, noise(model, x, n_samples, generator))


def minibatch_bound(bounds: torch.Tensor, n_train: int) -> torch.Tensor:
    """L^M(theta, phi; X^M) = (N / M) sum_i L(theta, phi; x^(i)), AEVB eq. (8).

    `bounds` is (M,), or (K, M) for a stack of K models: then the sum over the models of each one's
    eq. (8), M still the minibatch size of one model."""
    return bounds.sum() * (n_train / bounds.shape[-1])


def prior_parameters(named_parameters: Iterable[tuple[str, torch.Tensor]], scope: str, model_axes: int = 0) -> list[torch.Tensor]:
    """The parameters the weight prior p(theta) = N(0, I / precision) covers (PAPER.md §10.4).

    `weights`: matrices only, as [K]; `all`: biases and noise vectors too; `none`: no prior (ML).
    `model_axes`: leading axes that index a stack of models (`VAE.model_axes`), not the parameter's own.
    """
    if scope == "none":
        return []
    if scope == "weights":
        return [p for _, p in named_parameters if p.ndim - model_axes >= 2]
    if scope == "all":
        return [p for _, p in named_parameters]
    raise ValueError(f"unknown prior scope {scope!r}; choose one of weights, all, none")


def prior_weight_decay(precision: float, n_train: int) -> float:
    """The weight prior's term of the MAP objective as a weight decay (AEVB §5, PAPER.md §10.4).

    For theta ~ N(0, I / precision), -(1/N) log p(theta) = precision / (2N) ||theta||^2 + const has
    the gradient (precision / N) theta: exactly the weight decay `build_optimizer` adds to the
    gradients of the parameters `prior_parameters` names, inside the optimizer's fused kernel (one
    pass, where autograd of the sum of squares needs three over every weight each step).
    """
    return precision / n_train


def map_objective(bounds: torch.Tensor, n_train: int) -> torch.Tensor:
    """The data term (1/N) eq. (8) of the per-datapoint MAP objective (1/N) [eq. (8) + log p(theta)]
    (AEVB §5); its prior term enters through the optimizer's weight decay (`prior_weight_decay`).

    Dividing by N keeps gradients O(1) for every optimizer and leaves Adagrad's steps unchanged; the
    prior weighs M/N against the minibatch sum, as in [K].
    """
    return minibatch_bound(bounds, n_train) / n_train
