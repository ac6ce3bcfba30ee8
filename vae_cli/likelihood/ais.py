"""Annealed importance sampling [Neal2001] from p(z) to p(z|x) along the geometric path
f_t(z) = p(z) p(x|z)^beta_t, with HMC transitions (`hmc.py`) and the schedule of [Wu2017].

[Neal2001] Neal, Annealed importance sampling, Statistics and Computing 11, 2001.
[Wu2017] Wu, Burda, Salakhutdinov & Grosse, On the quantitative analysis of decoder-based generative
models, ICLR 2017 (and its code, github.com/tonywu95/eval_gen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hmc import HMCState, adapt_step_size, hmc_step, value_and_grad
from . import Estimate, log_mean_exp_summary

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
