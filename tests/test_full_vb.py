"""Full VB over the decoder parameters (AEVB App. F): the math against exact answers, then the run.

1. On a conjugate linear-Gaussian model, training q(theta) by `methods.take_step` reaches the exact optimum.
2. The closed-form KL(q(theta) || p(theta)) equals its Monte Carlo form within standard errors.
3. The per-minibatch estimator's expectation equals a direct Monte Carlo evaluation of eq. (22).
Tolerances come from standard errors (4 of them) or from the noise left after averaging iterates.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hydra.errors import ConfigCompositionException

from conftest import compose_config
from helpers import build_vae
from vae_cli import full_vb
from vae_cli.config import validate
from vae_cli.data import load_dataset
from vae_cli.errors import UserError
from vae_cli.estimators import get_estimator, noise
from vae_cli.generators import evaluation_generator
from vae_cli.jobs.train import train
from vae_cli.methods import Minibatch, take_step
from vae_cli.methods import full_vb as full_vb_method
from vae_cli.models import build_vae as build_configured_vae
from vae_cli.runs import WALL_CLOCK_FIELDS, load_checkpoint, read_metrics

CPU = torch.device("cpu")
F64 = torch.float64


def _conjugate_problem(seed: int, D: int = 3, J: int = 2, N: int = 20, noise_var: float = 0.5):
    """x_i = W z_i + b + noise, z_i ~ N(0, I), noise ~ N(0, s^2 I), W and s^2 known, b unknown."""
    g = torch.Generator().manual_seed(seed)
    model = build_vae(D, J, [], "linear_gaussian", 0.01, g).double()
    W = torch.randn(D, J, generator=g, dtype=F64)
    with torch.no_grad():
        model.decoder.linear.weight.copy_(W)
        model.decoder.log_var.fill_(math.log(noise_var))
    model.decoder.linear.weight.requires_grad_(False)
    model.decoder.log_var.requires_grad_(False)
    b_true = torch.randn(D, generator=g, dtype=F64)
    x = torch.randn(N, J, generator=g, dtype=F64) @ W.T + b_true + math.sqrt(noise_var) * torch.randn(N, D, generator=g, dtype=F64)
    return model, x, g


@pytest.fixture
def one_thread():
    """Small tensors: the fused CPU optimizers otherwise wake a thread pool every step (slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_q_theta_reaches_the_exact_posterior_of_a_conjugate_linear_gaussian_model(one_thread):
    """q(b) over the decoder bias of p(x|z, b) = N(Wz + b, s^2 I), z ~ N(0, I), b ~ N(0, I / alpha).

    The joint posterior of (b, z_1..z_N) is Gaussian with precision block Lambda_bb = (alpha + N/s^2) I.
    The optimum of the App. F bound over factorised Gaussians q(b) prod_i q(z_i|x_i) (reachable by
    the linear encoder: the optimal q(z_i) has a mean affine in x_i and a constant variance) has
    the exact posterior mean of b, E[b | X] = (alpha I + N C^-1)^-1 C^-1 sum_i x_i with
    C = W W^T + s^2 I, and variance 1 / Lambda_bb (the mean-field optimum of a Gaussian posterior,
    [Bishop2006] §10.1.2). A KL counted once per step instead of M/N, a data term without N/M, or a
    sigma that does not enter the sampled theta each moves the variance by a factor of about 2 or more.
    """
    alpha, noise_var, M, steps = 1.0, 0.5, 10, 4000
    model, x, g = _conjugate_problem(seed=0, noise_var=noise_var)
    N, D = x.shape
    W = model.decoder.linear.weight
    C = W @ W.T + noise_var * torch.eye(D, dtype=F64)
    exact_mean = torch.linalg.solve(alpha * torch.eye(D, dtype=F64) + N * torch.linalg.inv(C), torch.linalg.solve(C, x.sum(0)))
    exact_var = 1.0 / (alpha + N / noise_var)

    cfg = compose_config(["method=full_vb", "model=linear_gaussian", "optimizer.lr=0.3", "method.init_log_sigma=-3",
                          f"trainer.batch_size={M}", f"prior.precision={alpha}"])
    method = full_vb_method.build(cfg, model, N, CPU, torch.Generator())
    for name in ("linear.weight", "log_var"):  # W and s^2 are known: q(theta) of them a point mass that is not trained
        with torch.no_grad():
            method.posterior.log_std[name].fill_(-30.0)  # theta~ = mu + 1e-13 zeta
        method.posterior.log_std[name].requires_grad_(False)
    mean, log_std = method.posterior.mean["linear.bias"], method.posterior.log_std["linear.bias"]
    W_before = W.detach().clone()
    start_error = (mean - exact_mean).abs().max().item()
    mean_sum, log_std_sum, n_avg = torch.zeros(D, dtype=F64), torch.zeros(D, dtype=F64), 0
    for step in range(steps):
        if step % (N // M) == 0:
            order = torch.randperm(N, generator=g)
        idx = order[(step % (N // M)) * M:][:M]
        take_step(method, Minibatch(x[idx], idx), g)
        if step >= steps // 2:  # average the second half of the iterates (Polyak) to remove SGD noise
            mean_sum += mean.detach()
            log_std_sum += log_std.detach()
            n_avg += 1
    learned_mean, learned_var = mean_sum / n_avg, torch.exp(2 * log_std_sum / n_avg)
    assert torch.equal(W, W_before) and (method.posterior.log_std["log_var"] == -30.0).all()  # the known parts stayed put
    exact_sd = math.sqrt(exact_var)
    assert start_error > 5 * exact_sd  # it starts far away
    assert (learned_mean - exact_mean).abs().max().item() < 0.15 * exact_sd
    assert torch.allclose(learned_var, torch.full_like(learned_var, exact_var), rtol=0.12)


def _random_posterior(seed: int):
    g = torch.Generator().manual_seed(seed)
    model = build_vae(4, 2, [3], "gaussian", 0.5, g).double()
    posterior = full_vb.ParameterPosterior(model.decoder, [n for n, _ in model.decoder.named_parameters()], 0.0)
    with torch.no_grad():
        for t in posterior.log_std.values():
            t.copy_(-2.0 + 1.5 * torch.rand(t.shape, generator=g, dtype=F64))
    return model, posterior, g


def test_closed_form_kl_equals_its_monte_carlo_form_and_torch_distributions():
    """KL(q || N(0, I/alpha)) = E_q[log q(theta) - log p_alpha(theta)], with alpha != 1 so that the
    log alpha term counts."""
    alpha, n_draws = 2.5, 4000
    _, posterior, g = _random_posterior(seed=1)
    closed = posterior.kl_to_prior(alpha).item()
    draws = torch.stack([posterior.log_prob(th) - full_vb.log_hyperprior(th, alpha)
                         for th in (posterior.rsample(g) for _ in range(n_draws))]).detach()
    std_err = draws.std().item() / math.sqrt(n_draws)
    assert abs(draws.mean().item() - closed) < 4 * std_err
    n_params = sum(t.numel() for t in posterior.log_std.values())
    assert 0.5 * math.log(alpha) * n_params > 20 * std_err  # the test sees a missing log alpha term
    oracle = sum(kl_divergence(Normal(mu, torch.exp(posterior.log_std[n])), Normal(0.0, 1.0 / math.sqrt(alpha))).sum()
                 for n, mu in posterior.mean.items()).item()
    assert closed == pytest.approx(oracle, rel=1e-8)
    # the Monte Carlo form of the parameter term is log p_alpha - log q at the drawn theta
    theta = posterior.rsample(g)
    term = full_vb.parameter_term(posterior, theta, alpha, "monte_carlo")
    assert term.item() == pytest.approx((full_vb.log_hyperprior(theta, alpha) - posterior.log_prob(theta)).item())


def _decoder_by_hand(theta: dict, z: torch.Tensor):
    """The one-hidden-layer Gaussian MLP of eq. (12) written out from its parameter tensors."""
    h = torch.tanh(z @ theta["net.hidden.0.weight"].transpose(-1, -2) + theta["net.hidden.0.bias"].unsqueeze(-2))
    out = h @ theta["net.out.weight"].transpose(-1, -2) + theta["net.out.bias"].unsqueeze(-2)
    mean, log_var = out.chunk(2, dim=-1)
    return Normal(mean, torch.exp(0.5 * log_var))


def _eq22_by_hand(model, posterior, x: torch.Tensor, alpha: float, n_draws: int, g: torch.Generator) -> torch.Tensor:
    """f_phi(x, z, theta) / N of AEVB eq. (21) for n_draws independent (x ~ X, eps, zeta), eq. (22).

    Densities from torch.distributions; theta~ = mu + sigma zeta drawn here, batched over draws.
    """
    N = x.shape[0]
    xs = x[torch.randint(N, (n_draws,), generator=g)]  # (R, D) random datapoints x^(l)
    theta = {n: mu + torch.exp(posterior.log_std[n]) * torch.randn((n_draws, *mu.shape), generator=g, dtype=F64)
             for n, mu in posterior.mean.items()}  # (R, ...) each
    q_z = model.encoder(xs)
    z = q_z.mean + q_z.std * torch.randn(q_z.mean.shape, generator=g, dtype=F64)  # (R, J)
    log_p_x = _decoder_by_hand(theta, z.unsqueeze(-2)).log_prob(xs.unsqueeze(-2)).sum((-1, -2))
    log_p_z = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q_z = Normal(q_z.mean, q_z.std).log_prob(z).sum(-1)
    log_p_theta = sum(Normal(0.0, 1.0 / math.sqrt(alpha)).log_prob(t).flatten(1).sum(1) for t in theta.values())
    log_q_theta = sum(Normal(posterior.mean[n], torch.exp(posterior.log_std[n])).log_prob(t).flatten(1).sum(1) for n, t in theta.items())
    f = N * (log_p_x + log_p_z - log_q_z) + log_p_theta - log_q_theta  # eq. (21)
    return (f / N).detach()


def _minibatch_estimate(model, posterior, x, estimator, n_train, alpha, kl, g):
    """The mean of `sgvb_full_vb` over a minibatch at fresh draws zeta (theta~ = h_phi(zeta)) and eps (z)."""
    zeta = posterior.noise(g)
    return full_vb.sgvb_full_vb(model, posterior, x, noise(model, x, 1, g), zeta, estimator, n_train, alpha, kl).mean()


@pytest.mark.parametrize("kl", ["closed_form", "monte_carlo"])
@pytest.mark.parametrize("estimator", ["sgvb_a", "sgvb_b"])
def test_minibatch_estimator_has_the_expectation_of_eq_22(kl, estimator):
    """E[mean_i sgvb_full_vb(x_i)] over minibatches, zeta and eps = E[f_phi] / N of eq. (22), fixed phi."""
    alpha, N, M, reps = 1.7, 40, 5, 1500
    model, posterior, g = _random_posterior(seed=2)
    x = torch.rand(N, 4, generator=g, dtype=F64)
    with torch.no_grad():
        ours = torch.stack([
            _minibatch_estimate(model, posterior, x[torch.randperm(N, generator=g)[:M]], get_estimator(estimator), N, alpha, kl, g)
            for _ in range(reps)
        ])
        direct = _eq22_by_hand(model, posterior, x, alpha, 60_000, g)
    se = math.hypot(ours.std().item() / math.sqrt(reps), direct.std().item() / math.sqrt(direct.numel()))
    assert abs(ours.mean().item() - direct.mean().item()) < 4 * se
    kl_value = posterior.kl_to_prior(alpha).item()
    assert kl_value * (1 / M - 1 / N) > 10 * se  # a KL weighed 1/M instead of 1/N per datapoint would fail


def test_draws_average_the_bound_over_q_and_sigma_to_zero_gives_the_mean():
    model, posterior, g = _random_posterior(seed=3)
    x = torch.rand(50, 4, generator=g, dtype=F64)
    args = (model, posterior, x, "sgvb_b", 1, 16)
    at_mean = full_vb.evaluate_over_posterior(*args, 0, torch.Generator().manual_seed(0))
    over_q = full_vb.evaluate_over_posterior(*args, 8, torch.Generator().manual_seed(0))
    assert over_q.n_points == at_mean.n_points == 50 and over_q.mean != at_mean.mean
    with torch.no_grad():
        for t in posterior.log_std.values():
            t.fill_(-30.0)
    zero_width = [full_vb.evaluate_over_posterior(*args, 8, torch.Generator().manual_seed(5)).mean]
    generator = torch.Generator().manual_seed(5)  # the same noise for z once the draws of theta are skipped
    for _ in range(8):
        posterior.rsample(generator)
        zero_width.append(full_vb.evaluate_over_posterior(*args, 0, generator).mean)
    assert zero_width[0] == pytest.approx(sum(zero_width[1:]) / 8, rel=1e-9)


def test_full_vb_config_composes_and_a_flat_prior_is_refused():
    validate(compose_config(["method=full_vb", "model.latent_dim=5", "dataset=frey"]))  # the commands
    cfg = compose_config(["method=full_vb", "method.init_log_sigma=-6", "prior.precision=1"])
    validate(cfg)
    assert cfg.method.init_log_sigma == -6 and cfg.method.kl == "closed_form" and cfg.method.eval_draws == 0
    for override, needle in [("prior.precision=0", "method=full_vb needs a proper hyperprior"),
                             ("method.eval_draws=-1", "method.eval_draws=-1 must be >= 0")]:
        with pytest.raises(UserError, match=needle):
            validate(compose_config(["method=full_vb", override]))
    with pytest.raises(ConfigCompositionException) as info:  # a choice outside the KLForm enum fails at composition
        compose_config(["method=full_vb", "method.kl=sampled"])
    assert "Invalid value 'sampled', expected one of [closed_form, monte_carlo]" in str(info.value.__cause__)


FREY = ["dataset=frey", "model.latent_dim=5", "method=full_vb", "evaluation.train_points=300", "evaluation.test_points=200",
        "evaluation.first=1e3", "trainer.progress=false", "trainer.figures=false", "trainer.checkpoint_every=1e3", "method.kl=monte_carlo",
        "method.eval_draws=2"]


def test_full_vb_resumes_exactly_and_its_checkpoint_rebuilds_q_theta(tmp_path, shared_data, one_thread):
    def run(name, *overrides):
        return train(compose_config([f"dataset.root={shared_data}", *FREY, *overrides]), run_dir=tmp_path / name)

    run("straight", "trainer.max_samples=4e3")
    run("split", "trainer.max_samples=2e3")
    run("split", "trainer.max_samples=4e3", "trainer.on_existing=resume")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert all(torch.equal(t, b["model"][n]) for n, t in a["model"].items())  # encoder and q's means
    log_std_a, log_std_b = a["method"]["extra"]["log_std"], b["method"]["extra"]["log_std"]
    assert set(log_std_a) == {n.removeprefix("decoder.") for n in a["model"] if n.startswith("decoder.")}
    assert all(torch.equal(t, log_std_b[n]) for n, t in log_std_a.items())
    rows = read_metrics(tmp_path / "straight")
    split = {r["samples"]: r for r in read_metrics(tmp_path / "split")}
    assert all({k: v for k, v in split[r["samples"]].items() if k not in WALL_CLOCK_FIELDS}
               == {k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in rows)
    assert all(r["theta"] == "q_draws:2" and r["kl_theta"] > 0 for r in rows)

    # q(theta) from the checkpoint alone: the last row's test bound again (what vae-eval will do)
    cfg = compose_config([f"dataset.root={shared_data}", *FREY])
    data = load_dataset(cfg.dataset, CPU)
    model = build_configured_vae(data.data_dim, cfg.model, torch.Generator())  # the run's model (its reading's encoder head)
    model.load_state_dict(a["model"])
    posterior = full_vb.posterior_from_checkpoint(model, a)
    assert set(posterior.log_std) == {n for n, _ in model.decoder.named_parameters()}
    assert posterior.kl_to_prior(1.0).item() == pytest.approx(rows[-1]["kl_theta"], rel=1e-6)
    generator = evaluation_generator(CPU, cfg.seed, 4000)
    for split, x in (("train", data.train_eval[:300]), ("test", data.test[:200])):
        bound = full_vb.evaluate_over_posterior(model, posterior, x, "sgvb_b", 1, 1000, 2, generator)
        assert bound.mean == pytest.approx(rows[-1][f"{split}_bound"], rel=1e-6)
