"""The densities of the paper, written out: diagonal Gaussians and Bernoullis over the last axis.

AEVB eq. (9) (diagonal Gaussian encoder), App. B (its KL to the standard-normal prior), App. C
eqs. (11)-(12) (Bernoulli and Gaussian MLP likelihoods). Every `log_prob` sums over the last axis
(the data or latent dimension) and keeps every leading axis, so `(L, M, D) -> (L, M)`.
`torch.distributions` is used only as an oracle in the tests. Every draw takes a `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Generator = torch.Generator

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class DiagonalGaussian:
    """N(mean, diag(exp(log_var))); `log_var` is what the MLPs output (App. C)."""

    mean: torch.Tensor
    log_var: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.log_var)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mean, sigma^2 I), summed over the last axis."""
        sq = (x - self.mean) ** 2 * torch.exp(-self.log_var)
        return -0.5 * (sq + self.log_var + LOG_2PI).sum(-1)

    def rsample(self, n_samples: int, generator: Generator | None) -> torch.Tensor:
        """z = mean + sigma * eps, eps ~ N(0, I): the reparameterization g_phi(eps, x) (AEVB §2.4).

        Returns `(n_samples, *mean.shape)`; gradients flow to `mean` and `log_var`.
        """
        eps = torch.randn((n_samples, *self.mean.shape), generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.reparameterize(eps)

    def reparameterize(self, eps: torch.Tensor) -> torch.Tensor:
        """z = g_phi(eps, x) = mean + sigma * eps for given noise eps ~ N(0, I), (L, *mean.shape) (AEVB §2.4)."""
        return self.mean + self.std * eps

    def sample(self, generator: Generator | None) -> torch.Tensor:
        """One draw with the shape of `mean`, no gradient."""
        with torch.no_grad():
            return self.rsample(1, generator)[0]

    def kl_to_standard_normal(self) -> torch.Tensor:
        """D_KL(q || N(0, I)) in closed form, summed over the last axis.

        AEVB App. B: -D_KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
        """
        return -0.5 * (1.0 + self.log_var - self.mean**2 - torch.exp(self.log_var)).sum(-1)


@dataclass
class Bernoulli:
    """Independent Bernoullis with probabilities y = sigmoid(logits) (App. C eq. (11)).

    The likelihood is written with logits, never with clamped probabilities, so it stays exact at
    y -> 0 and y -> 1; grey-level targets x in [0, 1] are allowed (the paper's MNIST setting).
    """

    logits: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i x_i log y_i + (1 - x_i) log(1 - y_i), eq. (11), via the fused stable BCE."""
        logits, x = torch.broadcast_tensors(self.logits, x)
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def sample(self, generator: Generator | None) -> torch.Tensor:
        """Binary draws x ~ Bernoulli(y), no gradient."""
        with torch.no_grad():
            return torch.bernoulli(self.mean, generator=generator)


@dataclass
class UniformMixture:
    """Per dimension (1 - w) N(x; mean, sigma^2) + w U(x; 0, 1), w = sigmoid(logit): [K14]'s density
    for data in [0, 1] (PAPER.md §12.6); the uniform term bounds how badly one pixel can be fitted."""

    gaussian: DiagonalGaussian
    logit: torch.Tensor  # (D,) or broadcastable to the mean

    @property
    def mean(self) -> torch.Tensor:
        w = torch.sigmoid(self.logit)
        return (1 - w) * self.gaussian.mean + 0.5 * w

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gaussian
        log_normal = -0.5 * ((x - g.mean) ** 2 * torch.exp(-g.log_var) + g.log_var + LOG_2PI)  # per dimension
        log_uniform = torch.where((x >= 0) & (x <= 1), 0.0, -math.inf)  # log U(x; 0, 1)
        return torch.logaddexp(F.logsigmoid(-self.logit) + log_normal, F.logsigmoid(self.logit) + log_uniform).sum(-1)

    def sample(self, generator: Generator | None) -> torch.Tensor:
        """A draw of the mixture, no gradient: the uniform with probability w, else the Gaussian."""
        with torch.no_grad():
            normal = self.gaussian.sample(generator)
            pick = torch.bernoulli(torch.sigmoid(self.logit).expand_as(normal), generator=generator)
            uniform = torch.rand(normal.shape, generator=generator, device=normal.device, dtype=normal.dtype)
            return torch.where(pick > 0, uniform, normal)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), the prior p_theta(z) of the VAE (AEVB §3), summed over the last axis."""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)
