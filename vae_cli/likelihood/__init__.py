"""Estimators of the marginal likelihood log p_theta(x), one value per datapoint (PAPER.md §8, §11).

Each estimator is a function `(model, x, settings, generator) -> Estimate` that needs only the model
interface (`encoder`, `decoder`, `log_prior`, `log_joint`); `Estimate.log_px` is the `(M,)` estimate,
with its Monte Carlo standard error and per-datapoint diagnostics beside it. `ESTIMATORS` picks
them by name:
- `elbo`: the lower bound L(theta, phi; x) of AEVB eq. (2), as eq. (6) with many samples.
- `iwae`: log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) [Burda2016], in chunks of samples
  with a running logsumexp, so memory does not grow with k.
- `ais`: annealed importance sampling [Neal2001] from p(z) to p(z|x) along the geometric path
  f_t(z) = p(z) p(x|z)^beta_t with HMC transitions (`hmc.py`) and the schedule of [Wu2017].
- `appendix_d`: the paper's estimator (AEVB App. D): posterior draws by HMC, a density q(z) fitted
  to them, and the reciprocal importance-sampling identity 1/p(x) = E_{p(z|x)}[q(z) / p(x, z)] on
  fresh draws; reliable only for small N_z (the paper: below 5). `appendix_d(...)` returns the
  plain `(M,)` tensor (what Fig. 3's baselines call), `appendix_d_estimate` the full `Estimate`.

The three log-mean-exp estimators report the effective sample size of their weights,
ESS = (sum w)^2 / sum w^2, and the delta-method standard error of log mean w, sqrt(1/ESS - 1/n)
(it is itself estimated from the weights, so it is optimistic when they are heavy-tailed).

[Burda2016] Burda, Grosse & Salakhutdinov, Importance weighted autoencoders, ICLR 2016.
[Neal2001] Neal, Annealed importance sampling, Statistics and Computing 11, 2001.
[Wu2017] Wu, Burda, Salakhutdinov & Grosse, On the quantitative analysis of decoder-based
generative models, ICLR 2017 (and its code, github.com/tonywu95/eval_gen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Estimate:
    log_px: torch.Tensor  # (M,) estimate of log p(x) per datapoint, nats (double precision)
    mc_std_err: torch.Tensor  # (M,) its Monte Carlo standard error
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # (M,) each: ess, accept_rate, iwae_k10, ...


def concat(parts: Sequence[Estimate]) -> Estimate:
    """The estimates of consecutive batches as one."""
    return Estimate(torch.cat([p.log_px for p in parts]), torch.cat([p.mc_std_err for p in parts]),
                    {k: torch.cat([p.diagnostics[k] for p in parts]) for k in parts[0].diagnostics})


def log_mean_exp_summary(lse: torch.Tensor, lse_sq: torch.Tensor, n: int):
    """From logsumexp(log w) and logsumexp(2 log w) over n weights: log mean w, the ESS, and the
    delta-method standard error of log mean w, sqrt(1/ESS - 1/n)."""
    ess = torch.exp(2 * lse - lse_sq)
    return lse - math.log(n), ess, torch.sqrt((1.0 / ess - 1.0 / n).clamp(min=0.0))


def _registry():
    from .ais import AISSettings, ais
    from .appendix_d import AppendixDSettings, appendix_d_estimate
    from .importance import ELBOSettings, IWAESettings, elbo, iwae

    return ({"elbo": elbo, "iwae": iwae, "ais": ais, "appendix_d": appendix_d_estimate},
            {"elbo": ELBOSettings, "iwae": IWAESettings, "ais": AISSettings, "appendix_d": AppendixDSettings})


ESTIMATORS, SETTINGS = _registry()
