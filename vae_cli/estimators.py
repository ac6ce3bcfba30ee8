"""The SGVB estimators of the lower bound (AEVB §2.3) and the MAP objective they are used in (§5).

Each estimator is a pure function `(model, x, eps) -> (M,)`: one stochastic estimate of
L(theta, phi; x^(i)) per datapoint at the given noise eps^(l) ~ p(eps) (`noise`), differentiable in
theta and phi through the reparameterization z = mu + sigma * eps, as Algorithm 1 separates them
("eps <- random samples from p(eps); g <- grad L~(theta, phi; X^M, eps)"). No randomness, no
reduction, no backward, no logging: the caller draws eps and forms the minibatch estimator eq. (8)
once. Being pure, an estimator can be differentiated by torch.func, vmapped over a stack of models
and compiled with its update (`accel/`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


Estimator = Callable[..., torch.Tensor]


def noise(model, x: torch.Tensor, n_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """eps^(l) ~ p(eps) = N(0, I) for every datapoint of `x`, (L, M, J): the same draw as
    `DiagonalGaussian.rsample` of q(z|x) makes (the encoder itself draws nothing)."""
    return torch.randn((n_samples, *x.shape[:-1], model.latent_dim), generator=generator, device=x.device, dtype=x.dtype)


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


def estimate(estimator: Estimator, model, x: torch.Tensor, n_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """`estimator` at L fresh noise draws eps ~ p(eps) per datapoint, (M,): draw, then estimate."""
    return estimator(model, x, noise(model, x, n_samples, generator))


def minibatch_bound(bounds: torch.Tensor, n_train: int) -> torch.Tensor:
    """L^M(theta, phi; X^M) = (N / M) sum_i L(theta, phi; x^(i)), AEVB eq. (8)."""
    return bounds.sum() * (n_train / bounds.shape[-1])


def map_objective(bounds: torch.Tensor, n_train: int) -> torch.Tensor:
    """The per-datapoint MAP objective (1/N) [eq. (8) + log p(theta)] of AEVB §5, p(theta) = N(0, I / precision).

    Only the data term is formed here: log p(theta) enters as the optimizer's weight decay
    (precision / N) theta on the parameters it covers (`optim.weight_prior`), the same gradient in the
    optimizer's fused pass instead of three autograd passes over every weight. Dividing by N keeps
    gradients O(1) for every optimizer and leaves Adagrad's steps unchanged; the prior weighs M/N
    against the minibatch sum, as in [K].
    """
    return minibatch_bound(bounds, n_train) / n_train


def log_weight_prior(parameters: Iterable[torch.Tensor], precision: float) -> torch.Tensor:
    """log p(theta) = -precision/2 ||theta||^2 + const over `parameters` (AEVB §5): what the weight
    decay of `optim.weight_prior` differentiates (the tests check the two agree)."""
    return -0.5 * precision * sum((p**2).sum() for p in parameters)
