"""The paper's estimator of the marginal likelihood (AEVB App. D): posterior draws by HMC, a density
q(z) fitted to them, and the reciprocal importance-sampling identity 1/p(x) = E_{p(z|x)}[q(z) / p(x, z)]
on fresh draws; reliable only for small N_z (the paper: below 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..checks import check
from ..distributions import LOG_2PI
from ..hmc import init_state, run_chains
from . import Estimate, log_mean_exp_summary

class Density(str, Enum):
    gaussian = "gaussian"  # full covariance
    diagonal = "diagonal"


@dataclass
class AppendixDSettings:
    n_samples: int = check(50, "positive")  # L posterior draws to fit q(z), and L fresh ones to estimate (AEVB App. E: 50)
    # draws come from independent chains, one chain per datapoint for each half
    n_leapfrog: int = check(4, "positive")  # leapfrog steps per HMC transition (AEVB App. E)
    n_adapt: int = check(100, "non_negative")  # burn-in transitions that adapt the step size, discarded (PAPER.md §10.10)
    thin: int = check(5, "positive")  # transitions between kept draws (PAPER.md §10.10: unstated; 5 mixes well on our tests)
    target_accept: float = check(0.9, "probability")  # AEVB App. E
    init_step_size: float = check(0.1, "positive")
    jitter: float = check(0.2, "fraction")  # step sizes drawn from step x [0.8, 1.2] per transition (vae_cli/hmc.py: no periodic chains)
    n_starts: int = check(200, "positive")  # both chains of a point start at the most probable of this many prior draws
    density: Density = Density.gaussian  # q(z)
    cov_scale: float = check(1.0, "positive")  # q covariance = cov_scale x the covariance of the draws (< 1: lighter tails)


def starting_points(model, x: torch.Tensor, n_candidates: int, generator: torch.Generator, chunk: int = 20) -> torch.Tensor:
    """Per datapoint, the most probable under p(x, z) of `n_candidates` prior draws: `(M, J)`.

    HMC with a few leapfrog steps rarely leaves the mode of p(z|x) it starts in; starting near the
    main mode keeps the chains out of minor ones. Candidates are scored `chunk` at a time."""
    M, rows = x.shape[0], torch.arange(x.shape[0], device=x.device)
    best_z, best = None, None
    with torch.no_grad():
        for start in range(0, n_candidates, chunk):
            z = torch.randn((min(chunk, n_candidates - start), M, model.latent_dim), generator=generator, device=x.device, dtype=x.dtype)
            value, arg = model.log_joint(x, z).max(0)  # (M,)
            z = z[arg, rows]
            if best_z is not None:
                z = torch.where((value > best)[:, None], z, best_z)
                value = torch.maximum(value, best)
            best_z, best = z, value
    return best_z


def posterior_samples(model, x: torch.Tensor, n_draws: int, s: AppendixDSettings, generator: torch.Generator,
                      z0: torch.Tensor | None = None):
    """HMC draws from p(z|x) proportional to p(z) p(x|z) (AEVB App. D step 1): `(n_draws, M, J)`.

    One chain per datapoint, started at `z0` (default: a prior draw), adapted for `n_adapt` transitions.
    """
    def log_prob(z):
        return model.log_joint(x, z)

    if z0 is None:
        z0 = torch.randn((x.shape[0], model.latent_dim), generator=generator, device=x.device, dtype=x.dtype)
    step = torch.tensor(s.init_step_size, device=x.device, dtype=x.dtype)
    return run_chains(init_state(z0, log_prob), log_prob, step, s.n_leapfrog, n_draws, s.n_adapt, generator,
                      target_accept=s.target_accept, thin=s.thin, jitter=s.jitter)


def fit_gaussian(draws: torch.Tensor, full_covariance: bool = True, cov_scale: float = 1.0, jitter: float = 1e-6):
    """Per-datapoint Gaussian fit to draws `(L, M, J)`: its log-density as a function of `(L', M, J)`.

    Any normalised q keeps E_post[q/p(x,z)] = 1/p(x); the variance of that ratio is finite only
    when q is lighter-tailed than the posterior, hence `cov_scale` < 1 in App. D use.
    """
    mean = draws.mean(0)  # (M, J)
    centred = draws - mean
    n, J = draws.shape[0], draws.shape[-1]
    cov = torch.einsum("lmi,lmj->mij", centred, centred) / max(n - 1, 1)  # (M, J, J)
    if not full_covariance:
        cov = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    cov = cov_scale * cov + jitter * torch.eye(J, device=draws.device, dtype=draws.dtype)
    chol = torch.linalg.cholesky(cov)
    half_log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (M,)

    def log_q(z: torch.Tensor) -> torch.Tensor:
        r = (z - mean).unsqueeze(-1)  # (L', M, J, 1)
        solved = torch.linalg.solve_triangular(chol.expand(z.shape[0], -1, -1, -1), r, upper=False)
        return -0.5 * (solved**2).sum((-1, -2)) - half_log_det - 0.5 * J * LOG_2PI

    return log_q


def appendix_d_estimate(model, x: torch.Tensor, settings: AppendixDSettings, generator: torch.Generator) -> Estimate:
    """log p(x) ~ -log mean_l q(z_l) / p(x, z_l), z_l fresh posterior draws (AEVB App. D).

    The L draws that fit q(z) and the L fresh draws come from two chains per datapoint that share
    only their starting point (`starting_points`) and forget it during adaptation, so q is
    independent of the draws it is evaluated at and E[q(z)/p(x,z)] = 1/p(x) holds exactly (halves of
    one chain, as in [K], share its autocorrelation and bias the estimate upward in 1/p). Where
    p(z|x) has modes the chains cannot cross, the common start keeps both in the same one: chains
    started apart (the prior draws this used to take) put q on one mode and the fresh draws on
    another, and overestimated log p(x) by hundreds of nats on about 1 point in 10 of a trained
    N_z = 3 MNIST model; chains started at a single prior draw sat in minor modes, up to 90 nats
    below an importance-sampling lower bound. The standard error is the delta method's over the L
    ratios (the fresh draws are one chain, so it ignores their autocorrelation).
    """
    M = x.shape[0]
    z0 = starting_points(model, x, settings.n_starts, generator).repeat(2, 1)
    chains = posterior_samples(model, x.repeat(2, 1), settings.n_samples, settings, generator, z0=z0)
    fit, fresh = chains.samples[:, :M], chains.samples[:, M:]  # (L, M, J) each
    log_q = fit_gaussian(fit, full_covariance=settings.density == "gaussian", cov_scale=settings.cov_scale)
    with torch.no_grad():
        log_ratio = (log_q(fresh) - model.log_joint(x, fresh)).double()  # (L, M)
    log_inv_px, ess, std_err = log_mean_exp_summary(torch.logsumexp(log_ratio, 0), torch.logsumexp(2 * log_ratio, 0), settings.n_samples)
    accept = chains.accept_rate.view(2, M).mean(0).double()
    return Estimate(-log_inv_px, std_err, {"ess": ess, "accept_rate": accept})


def appendix_d(model, x: torch.Tensor, settings: AppendixDSettings, generator: torch.Generator) -> torch.Tensor:
    """The `(M,)` estimates of `appendix_d_estimate`, in the dtype of x."""
    return appendix_d_estimate(model, x, settings, generator).log_px.to(x.dtype)
