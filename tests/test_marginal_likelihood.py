"""Marginal-likelihood estimators against the exact log p(x) of a linear-Gaussian model.

p(x|z) = N(Wz + b, s^2 I), z ~ N(0, I) has p(x) = N(x; b, W W^T + s^2 I) exactly. Every estimate is
replicated in one batched call; the tolerance is a few standard errors of the replicate mean, so a
wrong normaliser, a missing Jacobian or a sign error (each tried below on a broken model) fails.
"""

import math
from dataclasses import replace

import pytest
import torch

from helpers import linear_gaussian_vae, orthogonal_columns, set_exact_posterior_encoder
from vae_cli.distributions import DiagonalGaussian, standard_normal_log_prob
import vae_cli.likelihood.appendix_d as appendix_d_module
from vae_cli.likelihood.ais import AISSettings, ais, annealing_schedule
from vae_cli.likelihood.appendix_d import AppendixDSettings, appendix_d, appendix_d_estimate, fit_gaussian
from vae_cli.likelihood.importance import CHUNK_BYTES, ELBOSettings, IWAESettings, chunk_sizes, elbo, iwae, log_weights, samples_per_chunk

TOL = 4.0  # standard errors


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are small: one thread avoids OpenMP synchronisation, which dominates on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _replicated(estimator, model, x, settings, g, reps):
    """`reps` independent estimates per datapoint in one batched call: (reps, M) estimates and
    the reported Monte Carlo standard errors."""
    out = estimator(model, x.repeat(reps, 1), settings, g)
    if isinstance(out, torch.Tensor):
        return out.view(reps, -1), None
    return out.log_px.view(reps, -1), out.mc_std_err.view(reps, -1)


def _mean_se(est):
    return est.mean(0), est.std(0) / math.sqrt(est.shape[0])


def calibration_model(latent_dim: int, seed: int):
    """A linear-Gaussian model whose encoder is its exact posterior made deliberately imperfect
    (mean shifted by 0.3, variance x 1.5), and four points drawn from the model."""
    model, g = linear_gaussian_vae(data_dim=8, latent_dim=latent_dim, seed=seed, noise_var=0.5)
    orthogonal_columns(model, seed)
    set_exact_posterior_encoder(model)
    with torch.no_grad():
        model.encoder.net.out.bias[:latent_dim] += 0.3
        model.encoder.net.out.bias[latent_dim:] += math.log(1.5)
    z = torch.randn(4, latent_dim, generator=g, dtype=torch.float64)
    x = model.decoder(z).sample(g)
    return model, x, model.decoder.exact_log_marginal(x).detach(), g


def analytic_elbo(model, x):
    """E_q[log p(x|z)] - KL(q || p(z)) in closed form for the linear-Gaussian decoder."""
    q = model.encoder(x)
    W, b = model.decoder.linear.weight, model.decoder.linear.bias
    s2 = torch.exp(model.decoder.log_var)
    mean_x = q.mean @ W.T + b
    var_x = torch.exp(q.log_var) @ (W**2).T  # diag of W diag(sigma_q^2) W^T
    expected_loglik = -0.5 * (torch.log(2 * math.pi * s2) + ((x - mean_x) ** 2 + var_x) / s2).sum(-1)
    return (expected_loglik - q.kl_to_standard_normal()).detach()


IWAE = IWAESettings(k=1000, chunk_size=300)
AIS = AISSettings(n_steps=200, n_chains=8, n_leapfrog=5, init_step_size=0.1)
CASES = {"iwae": (iwae, IWAE, 50), "ais": (ais, AIS, 25), "appendix_d": (appendix_d_estimate, AppendixDSettings(), 200)}


@pytest.mark.parametrize("name,latent_dim", [("iwae", 2), ("iwae", 5), ("ais", 2), ("ais", 5), ("appendix_d", 2)])
def test_estimate_matches_the_exact_log_likelihood(name, latent_dim):
    estimator, settings, reps = CASES[name]
    model, x, exact, g = calibration_model(latent_dim, seed=20 + latent_dim)
    est, reported = _replicated(estimator, model, x, settings, g, reps)
    mean, se = _mean_se(est)
    assert ((mean - exact).abs() < TOL * se).all(), (mean - exact, se)
    if name != "appendix_d":  # i.i.d. weights: the reported Monte Carlo standard error is of the right size
        spread = est.var(0).mean().sqrt()  # pooled over the points
        assert spread / 2 < reported.mean() < 2 * spread, (reported.mean(), spread)


def test_elbo_is_its_closed_form_and_below_the_exact_value():
    model, x, exact, g = calibration_model(latent_dim=5, seed=30)
    est, reported = _replicated(elbo, model, x, ELBOSettings(n_samples=400, chunk_size=128), g, reps=10)
    mean, se = _mean_se(est)
    assert ((mean - analytic_elbo(model, x)).abs() < TOL * se).all()
    assert ((exact - mean) > TOL * se).all(), (exact - mean, se)  # a strict lower bound: KL(q || p(z|x)) > 0
    assert ((reported.mean(0) / est.std(0) - 1).abs() < 0.5).all()


def test_iwae_is_non_decreasing_in_k_on_average_and_stays_below_the_exact_value():
    model, x, exact, g = calibration_model(latent_dim=5, seed=31)
    out = iwae(model, x.repeat(200, 1), replace(IWAE, k_curve=True), g)
    curve = torch.stack([out.diagnostics[f"iwae_k{k}"].view(200, -1) for k in (1, 10, 100, 1000)])  # (4, reps, M)
    torch.testing.assert_close(curve[-1], out.log_px.view(200, -1))
    gain = curve[1:] - curve[:-1]  # paired differences over the same (nested) samples
    mean_gain, se_gain = gain.mean((1, 2)), gain.flatten(1).std(1) / math.sqrt(gain[0].numel())
    assert (mean_gain > -3 * se_gain).all(), (mean_gain, se_gain)
    assert (curve[-1] - curve[0]).mean() > 10 * ((curve[-1] - curve[0]).std() / math.sqrt(gain[0].numel()))
    top, top_se = _mean_se(curve[-1])
    assert (top < exact + TOL * top_se).all()


class _MissingJacobian(DiagonalGaussian):
    def log_prob(self, z):  # the density of eps = (z - mu) / sigma: forgets -sum log sigma
        return standard_normal_log_prob((z - self.mean) / self.std)


class _SignError(DiagonalGaussian):
    def log_prob(self, z):
        return -super().log_prob(z)


class _WrongNormaliser(DiagonalGaussian):
    def log_prob(self, z):  # drops the 2 pi of N(z; mu, sigma^2)
        return super().log_prob(z) + 0.5 * z.shape[-1] * math.log(2 * math.pi)


@pytest.mark.parametrize("broken", [_MissingJacobian, _SignError, _WrongNormaliser])
@pytest.mark.parametrize("name,part", [("iwae", "encoder"), ("ais", "decoder")])
def test_a_broken_density_fails_the_exactness_check(monkeypatch, broken, name, part):
    """The check above rejects an encoder q(z|x) (IWAE) or decoder p(x|z) (AIS) that is off by a
    missing Jacobian, a sign or a normalising constant."""
    estimator, settings, reps = CASES[name]
    settings = replace(settings, n_steps=30) if name == "ais" else settings  # broken densities are far off
    model, x, exact, g = calibration_model(latent_dim=2, seed=22)
    net = getattr(model, part)
    original = net.forward
    monkeypatch.setattr(net, "forward", lambda v: broken(*vars(original(v)).values()))
    est, _ = _replicated(estimator, model, x, settings, g, reps)
    mean, se = _mean_se(est)
    assert not ((mean - exact).abs() < TOL * se).all()


def test_appendix_d_keeps_its_tensor_form_for_the_baselines():
    model, x, exact, g = calibration_model(latent_dim=2, seed=23)
    out = appendix_d(model, x, AppendixDSettings(), g)
    assert isinstance(out, torch.Tensor) and out.shape == (4,) and out.dtype == x.dtype


def test_a_wrong_normaliser_in_q_is_detected(monkeypatch):
    """q must be a normalised density: the same estimate with q off by a constant factor e^1 is
    off by 1 nat, far outside the tolerance above."""
    model, g = linear_gaussian_vae(data_dim=8, latent_dim=2, seed=11, noise_var=0.5)
    x = torch.randn(3, 8, generator=g, dtype=torch.float64)
    exact = model.decoder.exact_log_marginal(x).detach()
    original = appendix_d_module.fit_gaussian
    monkeypatch.setattr(appendix_d_module, "fit_gaussian", lambda *a, **k: (lambda z, f=original(*a, **k): f(z) + 1.0))
    est, _ = _replicated(appendix_d, model, x, AppendixDSettings(), g, reps=200)
    mean, se = _mean_se(est)
    assert ((mean - exact).abs() > TOL * se).all()


def test_fit_gaussian_is_the_normal_density_of_the_draws():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(500, 3, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    log_q = fit_gaussian(draws)
    z = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    mean = draws.mean(0)
    cov = torch.stack([torch.cov(draws[:, m].T) for m in range(3)])
    oracle = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov + 1e-6 * torch.eye(2, dtype=torch.float64)).log_prob(z)
    torch.testing.assert_close(log_q(z), oracle)


def test_chunks_cover_k_and_break_at_the_curve_points():
    assert chunk_sizes(5000, 300, (1, 10, 100, 1000, 5000)) == [1, 9, 90, 300, 300, 300] + [300] * 13 + [100]
    assert sum(chunk_sizes(5000, 300)) == 5000 and max(chunk_sizes(7, 100)) == 7


def test_the_automatic_chunk_keeps_its_tensors_within_the_budget():
    x = torch.zeros(100, 784)  # 313,600 bytes: 53 copies fit in 16 MiB
    assert samples_per_chunk(None, x) == 53 and samples_per_chunk(None, x) * x.numel() * 4 <= CHUNK_BYTES
    assert samples_per_chunk(None, torch.zeros(1000, 784)) == 5 and samples_per_chunk(None, torch.zeros(1, 784)) == 5349
    assert samples_per_chunk(None, torch.zeros(10_000, 784)) == 1  # never 0, however large the batch
    assert samples_per_chunk(None, torch.zeros(100, 784, dtype=torch.float64)) == 26
    assert samples_per_chunk(7, x) == 7  # an explicit chunk_size is kept


def test_the_automatic_chunk_is_the_explicit_one_of_its_size():
    model, x, _, _ = calibration_model(latent_dim=2, seed=24)
    x = x.repeat(1000, 1)  # (4000, 8) float64: 65 samples a chunk
    auto = iwae(model, x, IWAESettings(k=500), torch.Generator().manual_seed(1))
    explicit = iwae(model, x, IWAESettings(k=500, chunk_size=samples_per_chunk(None, x)), torch.Generator().manual_seed(1))
    other = iwae(model, x, IWAESettings(k=500, chunk_size=7), torch.Generator().manual_seed(1))
    assert samples_per_chunk(None, x) < 500  # so the chunking shows in the random stream
    torch.testing.assert_close(auto.log_px, explicit.log_px, rtol=0, atol=0)
    assert not torch.equal(auto.log_px, other.log_px)


def test_the_running_logsumexp_over_chunks_is_the_logsumexp_over_all_weights():
    model, x, _, _ = calibration_model(latent_dim=2, seed=24)
    lw = torch.cat(list(log_weights(model, x, chunk_sizes(500, 37), torch.Generator().manual_seed(1))))  # (500, M)
    out = iwae(model, x, IWAESettings(k=500, chunk_size=37), torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.log_px, torch.logsumexp(lw, 0) - math.log(500))
    w = torch.exp(lw - lw.max(0).values)
    torch.testing.assert_close(out.diagnostics["ess"], w.sum(0) ** 2 / (w**2).sum(0))


def test_annealing_schedules_run_from_zero_to_one():
    for kind in ("sigmoid", "linear"):
        betas = annealing_schedule(100, kind)
        assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all() and betas.shape == (101,)
    sig = annealing_schedule(100, "sigmoid")
    assert sig[1] < 0.01 / 2 and 1 - sig[-2] < 0.01 / 2  # denser than linear at both ends [Wu2017]


class _TwoModes:
    """z ~ N(0, 1), x | z ~ N(z^2, 0.3^2): for x = 4, p(z|x) has two mirror modes at z = +-2, each
    of half the mass, with no path between them an HMC chain could take (p(x|0) ~ e^-89)."""

    latent_dim = 1

    def log_joint(self, x, z):
        from vae_cli.distributions import DiagonalGaussian, standard_normal_log_prob

        return standard_normal_log_prob(z) + DiagonalGaussian(z**2, torch.full_like(z, math.log(0.09))).log_prob(x)


def test_appendix_d_stays_in_one_mode_and_never_overshoots_on_a_two_mode_posterior():
    """Both chains of a point start together, so they sample the same mode: the estimate is
    log p(x, z in that mode) = log p(x) - log 2, never above log p(x). Chains started apart would
    fit q on one mode and evaluate it on the other, overshooting by hundreds of nats."""
    model = _TwoModes()
    x = torch.full((200, 1), 4.0, dtype=torch.float64)
    grid = torch.linspace(-6, 6, 400_001, dtype=torch.float64)[:, None, None]
    exact = (torch.logsumexp(model.log_joint(x[:1], grid), 0) + math.log(12 / 400_000)).item()  # quadrature
    est = appendix_d(model, x, AppendixDSettings(), torch.Generator().manual_seed(12))
    assert (est < exact + 0.2).all(), est.max()
    mean, se = est.mean().item(), est.std().item() / math.sqrt(est.numel())
    assert abs(mean - (exact - math.log(2))) < 4 * se + 0.02, (mean, exact - math.log(2), se)
