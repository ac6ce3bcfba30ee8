"""The SGVB estimators of the lower bound (AEVB §2.3) and the MAP objective they are used in (§5).

Each estimator is a pure function `(model, x, n_samples, generator) -> (M,)`: one stochastic
estimate of L(theta, phi; x^(i)) per datapoint, differentiable in theta and phi through the
reparameterization z = mu + sigma * eps. No reduction, no backward, no logging: the caller forms
the minibatch estimator eq. (8) once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Estimator = Callable[..., torch.Tensor]


def sgvb_a(model, x: torch.Tensor, n_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """Generic estimator L^A, AEVB eq. (6): mean over l of log p(x, z_l) - log q(z_l|x)."""
    q = model.encoder(x)
    z = q.rsample(n_samples, generator)  # (L, M, J)
    return (model.log_joint(x, z) - q.log_prob(z)).mean(0)


def sgvb_b(model, x: torch.Tensor, n_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """Estimator L^B, AEVB eq. (7)/(10): -KL(q(z|x) || p(z)) in closed form (App. B) plus the
    mean over l of log p(x|z_l)."""
    q = model.encoder(x)
    z = q.rsample(n_samples, generator)  # (L, M, J)
    return model.decoder(z).log_prob(x).mean(0) - q.kl_to_standard_normal()


ESTIMATORS: dict[str, Estimator] = {"sgvb_a": sgvb_a, "sgvb_b": sgvb_b}


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise KeyError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


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
