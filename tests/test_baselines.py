"""The paper's baselines: wake-sleep (PAPER.md §9) and Monte Carlo EM with HMC (AEVB App. E)."""

from __future__ import annotations

import math

import pytest
import torch

from hydra.errors import ConfigCompositionException

from conftest import compose_config
from helpers import SHORT, build_vae, run_training, straight_and_resumed
from vae_cli.config import validate
from vae_cli.data import load_dataset
from vae_cli.distributions import LOG_2PI
from vae_cli.errors import UserError
from vae_cli.jobs.train import BOUND_FIELDS, LOGLIK_FIELDS, build_learner, evaluation_rows
from vae_cli.likelihood.appendix_d import AppendixDSettings, appendix_d
from vae_cli.methods import Minibatch, eager_update, mcem, take_step, wake_sleep

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """HMC runs many small batched operations whose cost is per-call overhead: a second intra-op
    thread only adds synchronisation (and stalls badly on a busy machine), so these tests use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bernoulli_model(seed: int, decoder_std: float = 1.0):
    """A small MLP VAE whose decoder is far from uniform, so fantasies x tell something about z."""
    g = torch.Generator().manual_seed(seed)
    model = build_vae(20, 2, [10], "bernoulli", 0.01, g)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * decoder_std)
    return model


def _fantasy_cross_entropy(model, n: int, seed: int) -> float:
    """E[-log q(z|x)] over (z, x) ~ p(z) p(x|z), with fixed fantasies (the sleep phase's objective)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, model.latent_dim, generator=g)
        x = model.decoder(z).sample(g)
        return -model.encoder(x).log_prob(z).mean().item()


# -- wake-sleep -----------------------------------------------------------------------------------

def _phase(method, name: str):
    """The wake or the sleep update of a wake-sleep method, run alone: (draw, then ascend) on a minibatch."""
    (update,) = [u for u in method.updates() if u.optimizer == name]

    def run(x, generator):
        batch = Minibatch(x, torch.arange(x.shape[0]))
        return eager_update(method, update, update.draw(method.model, batch, generator))

    return run


def test_the_sleep_phase_lowers_the_recognition_loss_on_model_samples_and_leaves_theta_alone():
    model = _bernoulli_model(0)
    method = wake_sleep.build(compose_config(["method=wake_sleep", "optimizer.lr=0.1"]), model, 1000, CPU, torch.Generator())
    sleep = _phase(method, "sleep")
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    before = _fantasy_cross_entropy(model, 20_000, seed=1)
    g = torch.Generator().manual_seed(2)
    like = torch.zeros(100, 20)  # the sleep phase draws M = 100 fantasies; the real minibatch only sets their number
    for _ in range(300):
        sleep(like, g)
    after = _fantasy_cross_entropy(model, 20_000, seed=1)
    assert after < before - 0.3, (before, after)  # about 2.84 -> 2.2 nats; SE of each about 0.01
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters()))


def test_the_wake_phase_raises_log_p_x_z_under_q_and_leaves_phi_alone():
    model = _bernoulli_model(3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        x = model.decoder(torch.randn(500, 2, generator=g)).sample(g)
    method = wake_sleep.build(compose_config(["method=wake_sleep", "optimizer.lr=0.1"]), model, 500, CPU, torch.Generator())
    wake = _phase(method, "wake")
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]

    def mean_log_joint():
        with torch.no_grad():
            z = model.encoder(x).rsample(20, torch.Generator().manual_seed(5))
            return model.log_joint(x, z).mean().item()

    before = mean_log_joint()
    for _ in range(100):
        wake(x[torch.randint(500, (100,), generator=g)], g)
    assert mean_log_joint() > before + 1.0
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))


def test_a_short_mnist_wake_sleep_run_improves_its_bound_and_stays_below_aevb(tmp_path, shared_data):
    """Fig. 2 in miniature (N_z = 10, 200 hidden units, 3e4 samples): wake-sleep learns, AEVB is ahead."""
    args = ("model.latent_dim=10", "model.hidden=[200]", "trainer.max_samples=3e4", "evaluation.per_decade=2")
    _, ws = run_training(tmp_path, "ws", "method=wake_sleep", *args, data_root=shared_data)
    _, ae = run_training(tmp_path, "aevb", "method=aevb", *args, data_root=shared_data)
    assert ws[-1]["test_bound"] > ws[0]["test_bound"] + 150  # about -543 -> -215
    assert all(r["method"] == "wake_sleep" and r["estimator"] == "sgvb_b" for r in ws)
    assert [r["samples"] for r in ws] == [r["samples"] for r in ae]
    for w, a in zip(ws[1:], ae[1:]):
        assert w["test_bound"] < a["test_bound"] and w["train_bound"] < a["train_bound"], (w, a)


# -- MCEM -----------------------------------------------------------------------------------------

def _ppca_data(n: int, data_dim: int, latent_dim: int, seed: int):
    """n points whose sample mean and covariance (1/n) are exactly mu and W W^T + s^2 I.

    The maximum-likelihood Gaussian of such data is then N(mu, W W^T + s^2 I), which a linear-Gaussian
    model with latent_dim factors can represent: its maximum likelihood is known exactly."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    cov = W @ W.T + 0.3 * torch.eye(data_dim, dtype=torch.float64)
    x0 = torch.randn(n, data_dim, generator=g, dtype=torch.float64)
    x0 = x0 - x0.mean(0)
    whiten = torch.linalg.cholesky(x0.T @ x0 / n)
    x0 = torch.linalg.solve_triangular(whiten, x0.T, upper=False).T  # mean 0, covariance exactly I
    return x0 @ torch.linalg.cholesky(cov).T + torch.randn(data_dim, generator=g, dtype=torch.float64)


def ppca_max_log_likelihood(x: torch.Tensor, latent_dim: int) -> float:
    """Mean log-likelihood per point at the probabilistic-PCA maximum (Tipping & Bishop 1999):
    W = U (Lambda - s^2 I)^(1/2), s^2 = the mean of the discarded eigenvalues of the sample covariance."""
    n, D = x.shape
    centred = x - x.mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / n).flip(0)
    s2 = eigenvalues[latent_dim:].mean()
    log_det = torch.log(eigenvalues[:latent_dim]).sum() + (D - latent_dim) * torch.log(s2)
    return (-0.5 * (D * LOG_2PI + log_det + D)).item()  # trace(C^-1 S) = D at the maximum


def test_mcem_climbs_to_the_maximum_likelihood_of_probabilistic_pca():
    """Monte Carlo EM (no weight prior) on a linear-Gaussian model of 40 points: the App. D estimate of
    the mean log-likelihood rises from about -9.6 to the closed-form maximum, -7.87 nats per point."""
    D, J, n, M = 6, 2, 40, 10
    x = _ppca_data(n, D, J, seed=0)
    best = ppca_max_log_likelihood(x, J)
    centred = x - x.mean(0)
    full_gaussian = -0.5 * (D * LOG_2PI + torch.logdet(centred.T @ centred / n) + D).item()
    assert abs(best - full_gaussian) < 1e-9  # the data were built so that the PPCA maximum is the Gaussian one
    cfg = compose_config(["method=mcem", "model=linear_gaussian", f"model.latent_dim={J}", "prior.scope=none", "optimizer.lr=0.1"])
    model = build_vae(D, J, [], "linear_gaussian", 0.01, torch.Generator().manual_seed(1)).double()
    method = mcem.build(cfg, model, n, CPU, torch.Generator().manual_seed(3))
    assert method.z.dtype == torch.float64 and method.z.shape == (n, J)
    g = torch.Generator().manual_seed(2)
    settings = AppendixDSettings()

    def estimate():
        values = appendix_d(model, x, settings, g)
        return values.mean().item(), values.std().item() / math.sqrt(n)

    start, _ = estimate()
    for _ in range(150):  # epochs
        perm = torch.randperm(n, generator=g)
        for k in range(0, n, M):
            take_step(method, Minibatch(x[perm[k : k + M]], perm[k : k + M]), g)
    end, end_se = estimate()
    exact = model.decoder.exact_log_marginal(x).mean().item()
    assert start < best - 1.0
    assert abs(exact - best) < 0.1, (exact, best)  # 1.75 nats below at the start
    assert abs(end - exact) < 0.05 + 4 * end_se, (end, exact, end_se)


def test_mcem_moves_only_the_chains_of_the_minibatch_and_adapts_their_step_sizes():
    model = _bernoulli_model(6)
    method = mcem.build(compose_config(["method=mcem", "optimizer.warmup_steps=0"]), model, 300, CPU, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x = model.decoder(torch.randn(300, 2, generator=g)).sample(g)
    z0, step0 = method.z.clone(), method.step_size.clone()
    idx = torch.arange(0, 300, 3)
    decoder_before = [p.detach().clone() for p in model.decoder.parameters()]
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    take_step(method, Minibatch(x[idx], idx), g)
    others = torch.ones(300, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(method.z[others], z0[others]) and torch.equal(method.step_size[others], step0[others])
    assert (method.step_size[idx] != step0[idx]).all()
    assert (method.z[idx] != z0[idx]).any(dim=1).float().mean() > 0.5  # most proposals accepted
    assert not all(torch.equal(a, b) for a, b in zip(decoder_before, model.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))  # no encoder in MCEM


def test_method_presets_compose_and_their_settings_are_checked():
    cfg = compose_config(["method=mcem"])
    validate(cfg)
    assert (cfg.method.n_leapfrog, cfg.method.n_weight_updates, cfg.method.target_accept) == (10, 5, 0.9)  # AEVB App. E
    validate(compose_config(["method=wake_sleep"]))
    with pytest.raises(ConfigCompositionException) as info:  # the aevb schema has no such key
        compose_config(["method.n_leapfrog=10"])
    assert "Key 'n_leapfrog' not in 'MethodConfig'" in str(info.value.__cause__)
    for overrides, needle in (
        (["method=mcem", "method.target_accept=1.5"], "method.target_accept=1.5 must lie strictly between 0 and 1"),
        (["method=mcem", "method.n_leapfrog=0"], "method.n_leapfrog=0 must be positive"),
        (["method=mcem", "method.jitter=-0.1"], "method.jitter=-0.1 must lie in [0, 1)"),
    ):
        with pytest.raises(UserError) as info:
            validate(compose_config(overrides))
        assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides,needles", [
    (["method=mcem", "method.jitter=1.0"], ["method.jitter=1.0"]),
    (["method.name=mcem"], ["method=mcem"]),
    (["method.name=gibbs"], ["method.name=gibbs", "aevb, wake_sleep, mcem, full_vb"]),
], ids=["jitter_one", "name_without_settings", "unknown_name"])
def test_a_method_name_without_its_settings_and_a_jitter_of_one_or_more_are_refused(overrides, needles):
    """A jitter >= 1 draws step sizes <= 0 (hmc.py: step x [1 - jitter, 1 + jitter]); `method.name=`
    set on another method's group lacks that method's settings (MCEM would fail at its build), and an
    unknown name is refused with the choices listed: each a one-line UserError before training."""
    with pytest.raises(UserError) as info:
        validate(compose_config(overrides))
    assert all(n in str(info.value) for n in needles) and "\n" not in str(info.value), str(info.value)


# -- the training loop with the baselines ---------------------------------------------------------

@pytest.mark.parametrize("method", ["wake_sleep", "mcem"])
def test_n_steps_straight_equal_half_resume_half(tmp_path, shared_data, method):
    """Exact resume of a baseline run, MCEM's per-datapoint chains and step sizes included."""
    args = (f"method={method}", "dataset.n_train=1500", "model.latent_dim=3", "model.hidden=[20]", "evaluation.schedule=linear",
            "evaluation.every=2e3", "trainer.checkpoint_every=1e3", "evaluation.loglik_points=10")
    a, b = straight_and_resumed(tmp_path, *args, data_root=shared_data)
    if method == "mcem":
        a, b = a["method"]["extra"], b["method"]["extra"]
        assert a["z"].shape == (1500, 3) and a["step_size"].shape == (1500,)
        assert torch.equal(a["z"], b["z"]) and torch.equal(a["step_size"], b["step_size"])


def test_mcem_logs_log_likelihoods_and_null_bounds_in_the_same_fields(tmp_path, shared_data):
    _, rows = run_training(tmp_path, "mcem", "method=mcem", "dataset.n_train=1000", "model.latent_dim=3", "model.hidden=[50]",
                   "trainer.max_samples=3e3", "evaluation.first=1e3", "evaluation.per_decade=1",
                   "evaluation.loglik_points=20", "trainer.figures=true", data_root=shared_data)
    assert all(set(BOUND_FIELDS + LOGLIK_FIELDS) <= set(r) for r in rows)
    assert all(r[k] is None for r in rows for k in BOUND_FIELDS)
    assert all(r["loglik_estimator"] == "appendix_d" and r["loglik_points"] == 20 for r in rows)
    assert rows[-1]["train_loglik"] > rows[0]["train_loglik"] + 100  # about -543 -> -200
    assert rows[-1]["test_loglik"] > rows[0]["test_loglik"] + 100
    figures = {p.name for p in (tmp_path / "mcem" / "figures").iterdir()}
    assert figures == {"samples.png"}  # no trained encoder, so no reconstructions


def test_tracked_log_likelihood_is_deterministic_and_above_the_bound(tmp_path, shared_data):
    """evaluation.loglik=true (Fig. 3): App. D estimates beside the bound, on the same points; the
    estimate of log p(x) lies above the ELBO, and the same evaluation gives the same numbers."""
    overrides = ["method=aevb", "dataset.n_train=1000", "model.latent_dim=3", "model.hidden=[100]", "trainer.max_samples=2e4",
                 "evaluation.first=2e4", "evaluation.loglik=true", "evaluation.loglik_points=40",
                 "evaluation.train_points=40", "evaluation.test_points=40"]
    summary, rows = run_training(tmp_path, "aevb", *overrides, data_root=shared_data)
    last = rows[-1]
    assert last["loglik_points"] == last["test_points"] == 40
    for split in ("train", "test"):
        gap = last[f"{split}_loglik"] - last[f"{split}_bound"]
        assert 0 < gap < 30, (split, gap)
    assert summary["test_loglik"] == last["test_loglik"]
    cfg = compose_config([f"dataset.root={shared_data}", *SHORT, *overrides])
    data = load_dataset(cfg.dataset, CPU)
    (again,) = evaluation_rows(cfg, build_learner(cfg, data, CPU), data, 0, 0)  # the run's model at 0, evaluated again
    assert again["train_loglik"] is not None and again["test_bound"] is not None
    assert again == {k: v for k, v in rows[0].items() if k in again}
