"""Bidirectional Monte Carlo [Grosse2015]: a sandwich of log p(x) on data simulated from the model.

For x drawn with its z from the model, z ~ p(z), x ~ p(x|z), that z is an exact draw of p(z|x). Forward
AIS from the prior (`ais.anneal`, the kernels and step sizes of `likelihood=ais`) gives w with E[w] =
p(x), so log mean w is a stochastic lower bound of log p(x); the same kernels run in reverse from the
exact z, with the schedule reversed, give w' with E[w'] = 1/p(x), so -log mean w' is a stochastic upper
bound [Grosse2015] (used on VAEs by [Wu2017]). The gap between the two bounds the error of AIS with that
schedule, and of any estimator whose value falls inside, on such data; it closes as the number of
intermediate distributions grows. It certifies simulated data only, not a test set: a budget that
closes the gap here is the evidence to choose for real data.

A Bernoulli decoder is simulated with binary draws x ~ Bernoulli(y): those are the model's own data,
and the z drawn with them is an exact posterior sample only for x drawn from p(x|z) (the grey-level
mean y is not a draw of the model). Gaussian decoders draw x ~ N(mu, sigma^2).

[Grosse2015] Grosse, Ghahramani & Adams, Sandwiching the marginal likelihood using bidirectional Monte
Carlo, arXiv:1511.02543, 2015. [Wu2017] as in `ais.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch

from ..checks import check
from .ais import AISSchedule, AISSettings, anneal, tuned_schedule


@dataclass
class BDMCSettings:
    n_points: int = check(100, "positive")  # pairs (x, z) simulated from the model
    steps: List[int] = check([100, 300, 1000], "positive")  # AIS budgets T swept, each forward and reverse
    n_chains: int = check(4, "positive")  # chains per point and direction; the bounds average their weights
    n_leapfrog: int = check(10, "positive")  # as likelihood=ais
    schedule: AISSchedule = AISSchedule.sigmoid
    sigmoid_radius: float = check(4.0, "positive")
    target_accept: float = check(0.65, "probability")
    init_step_size: float = check(0.01, "positive")
    others: List[str] = field(default_factory=lambda: ["elbo", "iwae", "ais", "appendix_d"])  # estimators placed against it


@torch.no_grad()
def simulate(model, n_points: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (x, z): z ~ p(z) = N(0, I), x ~ p(x|z) (binary draws for a Bernoulli decoder)."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    z = torch.randn((n_points, model.latent_dim), generator=generator, device=device, dtype=dtype)
    return model.decoder(z).sample(generator), z


@dataclass
class Sandwich:
    """Per simulated point: the stochastic lower and upper bounds of log p(x) and the acceptance."""

    lower: torch.Tensor  # (M,) log mean_c w_c, forward AIS
    upper: torch.Tensor  # (M,) -log mean_c w'_c, reverse AIS from the exact z
    accept_rate: torch.Tensor  # (M,) mean HMC acceptance of both directions
    n_steps: int  # T intermediate distributions

    @property
    def gap(self) -> torch.Tensor:
        return self.upper - self.lower


def sandwich(model, x: torch.Tensor, z: torch.Tensor, n_steps: int, settings: BDMCSettings, generator: torch.Generator) -> Sandwich:
    """Forward and reverse AIS with T = `n_steps` on the simulated pairs: one kernel, two directions."""
    ais_settings = AISSettings(n_steps, settings.n_chains, settings.n_leapfrog, settings.schedule, settings.sigmoid_radius,
                               settings.target_accept, settings.init_step_size)
    M, C = x.shape[0], settings.n_chains
    betas, tuned = tuned_schedule(model, x, ais_settings, generator)  # (T + 1,), (T - 1, M)
    xs = x.repeat(C, 1)  # chain c of point m is row c * M + m
    forward, _, accept_f = anneal(model, xs, betas, tuned.repeat(1, C), ais_settings, generator, adapt=False)
    reverse, _, accept_r = anneal(model, xs, betas.flip(0), tuned.flip(0).repeat(1, C), ais_settings, generator, adapt=False,
                                  z0=z.repeat(C, 1))
    log_mean = lambda log_w: torch.logsumexp(log_w.view(C, M), 0) - math.log(C)  # noqa: E731
    accept = (accept_f + accept_r).view(C, M).mean(0).double() / 2
    return Sandwich(log_mean(forward), -log_mean(reverse), accept, n_steps)
