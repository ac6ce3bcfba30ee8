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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from .distributions import LOG_2PI
from .hmc import HMCState, adapt_step_size, hmc_step, init_state, run_chains, value_and_grad

K_CURVE = (1, 10, 100, 1000, 5000)  # IWAE's k of `k_curve` ([Burda2016] reports k = 5000)


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


# --- ELBO and IWAE: importance sampling from the encoder ------------------------------------------

CHUNK_BYTES = 16 * 2**20  # the automatic chunk: (samples, batch, D) tensors of at most 16 MiB


@dataclass
class ELBOSettings:
    n_samples: int = 1000  # L, samples z ~ q(z|x) per datapoint
    chunk_size: Optional[int] = None  # samples drawn at once (memory ~ chunk_size x batch x D); None: `samples_per_chunk`


@dataclass
class IWAESettings:
    k: int = 5000  # importance samples per datapoint ([Burda2016]: 5000)
    chunk_size: Optional[int] = None  # samples drawn at once, whatever k; None: `samples_per_chunk`
    k_curve: bool = False  # also report the estimate after the first 1, 10, 100, 1000, 5000 samples


def samples_per_chunk(chunk_size: int | None, x: torch.Tensor) -> int:
    """`chunk_size`, or if None as many samples as keep a chunk's (samples, batch, D) tensors within
    CHUNK_BYTES. Larger tensors glibc's malloc may map afresh from the OS each time they are made, and
    the page faults of touching them made IWAE over the MNIST test set 1.35x slower with 2 threads at
    100 samples x 100 points (31 MB each; README, Choices); within 16 MiB it reuses its own heap."""
    if chunk_size is not None:
        return chunk_size
    return max(1, CHUNK_BYTES // (x.numel() * x.element_size()))  # a chunk's tensors: samples x the bytes of x


def chunk_sizes(n: int, chunk_size: int, marks: Sequence[int] = ()) -> list[int]:
    """Sizes of consecutive chunks covering n samples, at most chunk_size each, with a chunk
    boundary at every mark below n (so prefix estimates can be read off)."""
    sizes, done = [], 0
    for stop in sorted({m for m in marks if 0 < m < n} | {n}):
        while done < stop:
            sizes.append(min(chunk_size, stop - done))
            done += sizes[-1]
    return sizes


def log_weights(model, x: torch.Tensor, sizes: Sequence[int], generator: torch.Generator) -> Iterator[torch.Tensor]:
    """log p(x, z) - log q(z|x) for z ~ q(z|x), one `(c, M)` tensor per chunk size c."""
    q = model.encoder(x)
    for c in sizes:
        z = q.rsample(c, generator)  # (c, M, J)
        yield (model.log_joint(x, z) - q.log_prob(z)).double()


@torch.no_grad()
def elbo(model, x: torch.Tensor, settings: ELBOSettings, generator: torch.Generator) -> Estimate:
    """The lower bound, AEVB eq. (6) with L = n_samples; its standard error is sd(log w) / sqrt(L)."""
    n = settings.n_samples
    total = total_sq = shift = None
    for lw in log_weights(model, x, chunk_sizes(n, samples_per_chunk(settings.chunk_size, x)), generator):
        if shift is None:
            shift, total, total_sq = lw.mean(0), torch.zeros_like(lw[0]), torch.zeros_like(lw[0])
        total += (lw - shift).sum(0)
        total_sq += ((lw - shift) ** 2).sum(0)
    mean = total / n
    var = (total_sq - n * mean**2) / (n - 1) if n > 1 else torch.full_like(mean, math.nan)
    return Estimate(shift + mean, torch.sqrt(var.clamp(min=0.0) / n))


@torch.no_grad()
def iwae(model, x: torch.Tensor, settings: IWAESettings, generator: torch.Generator) -> Estimate:
    """log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) [Burda2016]; a running logsumexp over
    chunks, so memory is set by the chunk (`samples_per_chunk`), not k. With `k_curve`, diagnostics
    `iwae_k<m>` hold the estimate from the first m samples (nested, so the curve is cheap and smooth)."""
    k = settings.k
    marks = [m for m in K_CURVE if m < k] + [k] if settings.k_curve else []
    lse = lse_sq = None
    seen, curve = 0, {}
    for lw in log_weights(model, x, chunk_sizes(k, samples_per_chunk(settings.chunk_size, x), marks), generator):
        c_lse, c_sq = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
        lse, lse_sq = (c_lse, c_sq) if lse is None else (torch.logaddexp(lse, c_lse), torch.logaddexp(lse_sq, c_sq))
        seen += lw.shape[0]
        if seen in marks:
            curve[f"iwae_k{seen}"] = lse - math.log(seen)
    log_px, ess, std_err = log_mean_exp_summary(lse, lse_sq, k)
    return Estimate(log_px, std_err, {"ess": ess, **curve})


# --- AIS: annealing from the prior to the posterior ----------------------------------------------

@dataclass
class AISSettings:
    n_steps: int = 500  # T: intermediate distributions beta_1 .. beta_T = 1 ([Wu2017] code: 10,000)
    n_chains: int = 16  # independent chains per datapoint ([Wu2017] code: 16)
    n_leapfrog: int = 10  # leapfrog steps per HMC transition ([Wu2017] code: 10)
    schedule: str = "sigmoid"  # sigmoid ([Wu2017] §6.2) | linear
    sigmoid_radius: float = 4.0  # r of the sigmoid schedule ([Wu2017]: 4)
    target_accept: float = 0.65  # acceptance the step sizes are tuned to ([Wu2017] code: 0.65)
    init_step_size: float = 0.01  # first step size of the tuning run ([Wu2017] code: 0.01)


def annealing_schedule(n_steps: int, kind: str = "sigmoid", radius: float = 4.0) -> torch.Tensor:
    """0 = beta_0 < ... < beta_T = 1, `(T + 1,)` in double precision.

    sigmoid [Wu2017]: gamma_t = sigma(r (2t/T - 1)), beta_t = (gamma_t - gamma_0) / (gamma_T - gamma_0),
    denser near 0 and 1 where the intermediate distributions change fastest.
    """
    if kind == "linear":
        return torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if kind != "sigmoid":
        raise ValueError(f"unknown annealing schedule {kind!r}; choose sigmoid or linear")
    gamma = torch.sigmoid(torch.linspace(-radius, radius, n_steps + 1, dtype=torch.float64))
    return (gamma - gamma[0]) / (gamma[-1] - gamma[0])


def anneal(model, x: torch.Tensor, betas: torch.Tensor, step_size: torch.Tensor, settings: AISSettings,
           generator: torch.Generator, adapt: bool):
    """One AIS run per row of x [Neal2001]: z_0 ~ p(z) = N(0, I) (AEVB §3), then for t = 1 .. T
    log w += log f_t(z_{t-1}) - log f_{t-1}(z_{t-1}) = (beta_t - beta_{t-1}) log p(x|z_{t-1}),
    and, for t < T, one HMC transition leaving f_t invariant.

    `step_size` is `(T - 1, C)` (one per transition and chain) or, with `adapt`, `(C,)`: the start of
    a per-chain tuning toward `target_accept`. Returns log w `(C,)`, the step sizes used
    `(T - 1, C)` and the mean acceptance probability `(C,)`.
    """
    def log_lik(z):
        return model.decoder(z).log_prob(x)

    z = torch.randn((x.shape[0], model.latent_dim), generator=generator, device=x.device, dtype=x.dtype)
    ll, ll_grad = value_and_grad(log_lik, z)
    log_w, accept, used = torch.zeros_like(ll, dtype=torch.float64), torch.zeros_like(ll), []
    T = betas.shape[0] - 1
    for t in range(1, T + 1):
        log_w += (betas[t] - betas[t - 1]).item() * ll.double()
        if t == T:
            break
        beta = betas[t].item()
        prior, prior_grad = value_and_grad(model.log_prior, z)
        state = HMCState(z, prior + beta * ll, prior_grad + beta * ll_grad)  # at f_t

        def log_f(z, beta=beta):
            return model.log_prior(z) + beta * log_lik(z)

        eps = step_size if adapt else step_size[t - 1]
        state, info = hmc_step(state, log_f, eps, settings.n_leapfrog, generator)
        used.append(eps)
        if adapt:
            step_size = adapt_step_size(step_size, info.accept_prob, settings.target_accept)
        accept += info.accept_prob
        z = state.z
        ll, ll_grad = value_and_grad(log_lik, z)
    used = torch.stack(used) if used else z.new_zeros((0, x.shape[0]))
    return log_w, used, accept / max(T - 1, 1)


def ais(model, x: torch.Tensor, settings: AISSettings, generator: torch.Generator) -> Estimate:
    """log mean_c w_c over `n_chains` AIS chains per datapoint (a stochastic lower bound).

    The HMC step sizes come from a tuning run with one chain per datapoint whose step size adapts
    at every transition; its schedule is then frozen for the `n_chains` chains that are averaged.
    Adapting inside those chains would make each transition depend on the chain's own past and
    break the unbiasedness of w [Neal2001]; the tuning run costs 1/n_chains extra.
    """
    M, C = x.shape[0], settings.n_chains
    betas = annealing_schedule(settings.n_steps, settings.schedule, settings.sigmoid_radius)
    start = torch.full((M,), settings.init_step_size, device=x.device, dtype=x.dtype)
    _, tuned, _ = anneal(model, x, betas, start, settings, generator, adapt=True)  # (T - 1, M)
    log_w, _, accept = anneal(model, x.repeat(C, 1), betas, tuned.repeat(1, C), settings, generator, adapt=False)
    log_w = log_w.view(C, M)  # chain c of datapoint m is row c * M + m
    log_px, ess, std_err = log_mean_exp_summary(torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), C)
    return Estimate(log_px, std_err, {"ess": ess, "accept_rate": accept.view(C, M).mean(0).double()})


# --- AEVB App. D ---------------------------------------------------------------------------------

@dataclass
class AppendixDSettings:
    n_samples: int = 50  # L posterior draws to fit q(z), and L fresh ones to estimate (AEVB App. E: 50)
    # draws come from independent chains, one chain per datapoint for each half
    n_leapfrog: int = 4  # leapfrog steps per HMC transition (AEVB App. E)
    n_adapt: int = 100  # burn-in transitions that adapt the step size, discarded (PAPER.md §10.10)
    thin: int = 5  # transitions between kept draws (PAPER.md §10.10: unstated; 5 mixes well on our tests)
    target_accept: float = 0.9  # AEVB App. E
    init_step_size: float = 0.1
    jitter: float = 0.2  # step sizes drawn from step x [0.8, 1.2] per transition (vae_cli/hmc.py: no periodic chains)
    n_starts: int = 200  # both chains of a point start at the most probable of this many prior draws
    density: str = "gaussian"  # q(z): gaussian (full covariance) | diagonal
    cov_scale: float = 1.0  # q covariance = cov_scale x the covariance of the draws (< 1: lighter tails)


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


ESTIMATORS = {"elbo": elbo, "iwae": iwae, "ais": ais, "appendix_d": appendix_d_estimate}
SETTINGS = {"elbo": ELBOSettings, "iwae": IWAESettings, "ais": AISSettings, "appendix_d": AppendixDSettings}
