"""Annealed importance sampling [Neal2001] from p(z) to p(z|x) along the geometric path
f_t(z) = p(z) p(x|z)^beta_t, with HMC transitions (`hmc.py`) and the schedule of [Wu2017].

[Neal2001] Neal, Annealed importance sampling, Statistics and Computing 11, 2001.
[Wu2017] Wu, Burda, Salakhutdinov & Grosse, On the quantitative analysis of decoder-based generative
models, ICLR 2017 (and its code, github.com/tonywu95/eval_gen).
[Grosse2015] Grosse, Ghahramani & Adams, Sandwiching the marginal likelihood using bidirectional Monte
Carlo, arXiv:1511.02543, 2015.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..checks import check
from ..hmc import HMCState, adapt_step_size, hmc_step, value_and_grad
from . import Estimate, log_mean_exp_summary


class AISSchedule(str, Enum):
    sigmoid = "sigmoid"  # denser near beta = 0 and 1 ([Wu2017] §6.2)
    linear = "linear"


@dataclass
class AISSettings:
    n_steps: int = check(500, "positive")  # T: intermediate distributions beta_1 .. beta_T = 1 ([Wu2017] code: 10,000)
    n_chains: int = check(16, "positive")  # independent chains per datapoint ([Wu2017] code: 16)
    n_leapfrog: int = check(10, "positive")  # leapfrog steps per HMC transition ([Wu2017] code: 10)
    schedule: AISSchedule = AISSchedule.sigmoid
    sigmoid_radius: float = check(4.0, "positive")  # r of the sigmoid schedule ([Wu2017]: 4)
    target_accept: float = check(0.65, "probability")  # acceptance the step sizes are tuned to ([Wu2017] code: 0.65)
    init_step_size: float = check(0.01, "positive")  # first step size of the tuning run ([Wu2017] code: 0.01)


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
           generator: torch.Generator, adapt: bool, z0: torch.Tensor | None = None):
    """One AIS run per row of x [Neal2001] along `betas`: z_0 ~ p(z) = N(0, I) (AEVB §3) unless `z0`
    is given, then for t = 1 .. T
    log w += log f_t(z_{t-1}) - log f_{t-1}(z_{t-1}) = (beta_t - beta_{t-1}) log p(x|z_{t-1}),
    and, for t < T, one HMC transition leaving f_t invariant.

    Forward, betas rise from 0 to 1 and E[w] = p(x). Reversed (betas from 1 to 0, z0 an exact draw of
    p(z|x), the step sizes in reverse order) the same kernels run backwards and E[w] = 1/p(x)
    [Grosse2015] (`likelihood/bdmc.py`).
    `step_size` is `(T - 1, C)` (one per transition and chain) or, with `adapt`, `(C,)`: the start of
    a per-chain tuning toward `target_accept`. Returns log w `(C,)`, the step sizes used
    `(T - 1, C)` and the mean acceptance probability `(C,)`.
    """
    def log_lik(z):
        return model.decoder(z).log_prob(x)

    if z0 is None:
        z0 = torch.randn((x.shape[0], model.latent_dim), generator=generator, device=x.device, dtype=x.dtype)
    z = z0
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


def tuned_schedule(model, x: torch.Tensor, settings: AISSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The betas `(T + 1,)` and the HMC step size of every transition `(T - 1, M)`, from a tuning run
    with one chain per datapoint whose step size adapts at each transition toward `target_accept`."""
    betas = annealing_schedule(settings.n_steps, settings.schedule, settings.sigmoid_radius)
    start = torch.full((x.shape[0],), settings.init_step_size, device=x.device, dtype=x.dtype)
    _, tuned, _ = anneal(model, x, betas, start, settings, generator, adapt=True)
    return betas, tuned


def ais(model, x: torch.Tensor, settings: AISSettings, generator: torch.Generator) -> Estimate:
    """log mean_c w_c over `n_chains` AIS chains per datapoint (a stochastic lower bound).

    The HMC step sizes come from a tuning run with one chain per datapoint whose step size adapts
    at every transition; its schedule is then frozen for the `n_chains` chains that are averaged.
    Adapting inside those chains would make each transition depend on the chain's own past and
    break the unbiasedness of w [Neal2001]; the tuning run costs 1/n_chains extra.
    """
    M, C = x.shape[0], settings.n_chains
    betas, tuned = tuned_schedule(model, x, settings, generator)
    log_w, _, accept = anneal(model, x.repeat(C, 1), betas, tuned.repeat(1, C), settings, generator, adapt=False)
    log_w = log_w.view(C, M)  # chain c of datapoint m is row c * M + m
    log_px, ess, std_err = log_mean_exp_summary(torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), C)
    return Estimate(log_px, std_err, {"ess": ess, "accept_rate": accept.view(C, M).mean(0).double()})
