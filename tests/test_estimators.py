"""SGVB estimators A (eq. 6) and B (eq. 7), the minibatch estimator (eq. 8) and the MAP objective."""

import copy
import math

import pytest
import torch

from conftest import compose_config
from helpers import linear_gaussian_vae, orthogonal_columns, set_exact_posterior_encoder
from vae_cli import aevb, full_vb, mcem, wake_sleep
from vae_cli.estimators import estimate, map_objective, minibatch_bound, prior_parameters, prior_weight_decay, sgvb_a, sgvb_b
from vae_cli.models import build_vae
from vae_cli.optimizers import build_optimizer


def _closed_form_elbo(model, x):
    """ELBO of a linear-Gaussian decoder: E_q[log N(x; Wz + b, s^2)] has a closed form."""
    q = model.encoder(x)
    W, b = model.decoder.linear.weight, model.decoder.linear.bias
    s2 = torch.exp(model.decoder.log_var)
    mean_x = q.mean @ W.T + b
    spread = torch.exp(q.log_var) @ (W**2).T  # sum_j W_dj^2 sigma_j^2
    expected_ll = (-0.5 * torch.log(2 * math.pi * s2) - ((x - mean_x) ** 2 + spread) / (2 * s2)).sum(-1)
    return expected_ll - q.kl_to_standard_normal()


def _draws(estimator, model, x, n_draws, g):
    """n_draws independent single-sample estimates per datapoint, (S, M), in one batched call."""
    return estimate(estimator, model, x.repeat(n_draws, 1), 1, g).view(n_draws, x.shape[0])


def _random_encoder(model, g):
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def test_both_estimators_equal_the_closed_form_elbo_of_a_linear_gaussian_decoder():
    model, g = linear_gaussian_vae(data_dim=6, latent_dim=3, seed=0)
    _random_encoder(model, g)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    exact = _closed_form_elbo(model, x)
    with torch.no_grad():
        for estimator in (sgvb_a, sgvb_b):
            draws = _draws(estimator, model, x, 20_000, g)  # (S, M)
            se = draws.std(0) / math.sqrt(draws.shape[0])
            assert ((draws.mean(0) - exact).abs() < 4 * se).all(), (estimator.__name__, draws.mean(0), exact, se)
            # and the L-sample average is the same estimator with L times less variance
            big_l = estimate(estimator, model, x, 20_000, g)
            assert ((big_l - exact).abs() < 4 * draws.std(0) / math.sqrt(20_000)).all()


def test_a_and_b_agree_in_expectation_on_random_networks_and_b_has_lower_variance():
    g = torch.Generator().manual_seed(1)
    model = build_vae(12, 3, [8], "bernoulli", 0.5, g).double()
    x = torch.rand(5, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        a, b = _draws(sgvb_a, model, x, 50_000, g), _draws(sgvb_b, model, x, 50_000, g)
    se = torch.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()
    assert (b.var(0) < a.var(0)).all()


def test_sgvb_a_is_exactly_log_p_x_when_q_is_the_true_posterior():
    """Eq. (1): with q(z|x) = p(z|x) the bound is tight for every z, so L^A has zero variance."""
    model, g = linear_gaussian_vae(data_dim=7, latent_dim=3, seed=2)
    orthogonal_columns(model, seed=3)
    set_exact_posterior_encoder(model)
    x = torch.randn(6, 7, generator=g, dtype=torch.float64) * 2
    exact = model.decoder.exact_log_marginal(x)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(estimate(sgvb_a, model, x, 5, g), exact, rtol=0, atol=1e-9)
        # B at the optimum: KL(q || p(z)) is exact, E log p(x|z) estimated; mean over draws is log p(x)
        b = _draws(sgvb_b, model, x, 20_000, g)
    assert ((b.mean(0) - exact).abs() < 4 * b.std(0) / math.sqrt(20_000)).all()


def test_minibatch_estimator_scales_by_n_over_m():
    bounds = torch.tensor([-1.0, -2.0, -3.0, -6.0])
    assert minibatch_bound(bounds, n_train=100).item() == -300.0  # (N/M) sum = 25 * -12


def test_map_objective_is_eq8_over_n_and_the_prior_covers_the_scope():
    g = torch.Generator().manual_seed(4)
    model = build_vae(5, 2, [4], "bernoulli", 0.3, g).double()
    weights = prior_parameters(model.named_parameters(), "weights")
    assert len(weights) == 4 and all(p.ndim == 2 for p in weights)  # enc: W3, [W4;W5]; dec: W1, W2
    assert len(prior_parameters(model.named_parameters(), "all")) == 8
    assert prior_parameters(model.named_parameters(), "none") == []
    bounds = torch.randn(10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(map_objective(bounds, 50), bounds.mean())  # (1/N) (N/M) sum_i
    assert prior_weight_decay(2.0, 50) == 2.0 / 50


@pytest.mark.parametrize("scope", ["weights", "all", "none"])
@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_aevb_steps_follow_the_gradient_of_eq8_plus_the_weight_prior(optimizer, scope):
    """Three AEVB updates (the prior as the optimizer's weight decay) equal three updates of the same
    optimizer on autograd's gradient of the whole MAP objective (1/N) [eq. (8) + log p(theta)],
    log p(theta) = -precision/2 ||theta||^2 written out here (AEVB §5)."""
    precision, n_train = 3.0, 40
    cfg = compose_config([f"optimizer={optimizer}", f"prior.precision={precision}", f"prior.scope={scope}",
                          *(["optimizer.momentum=0.9"] if optimizer == "sgd" else [])])
    model = build_vae(6, 2, [5], "bernoulli", 0.3, torch.Generator().manual_seed(2)).double()
    reference = copy.deepcopy(model)
    method = aevb.build(cfg, model, n_train, torch.device("cpu"))
    by_hand = build_optimizer(cfg.optimizer, reference.parameters(), torch.device("cpu"))  # no weight decay
    covered = prior_parameters(reference.named_parameters(), scope)
    x = torch.rand(3, 8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours_noise, their_noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for batch in x:
        method.step(batch, torch.arange(8), ours_noise)
        log_prior = -0.5 * precision * sum((p**2).sum() for p in covered) if covered else torch.zeros(())
        objective = minibatch_bound(estimate(sgvb_b, reference, batch, 1, their_noise), n_train) / n_train + log_prior / n_train
        by_hand.zero_grad()
        (-objective).backward()
        by_hand.step()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-13, msg=name)
    moved = [(p - q).abs().max().item() for p, q in zip(model.parameters(), build_vae(6, 2, [5], "bernoulli", 0.3,
             torch.Generator().manual_seed(2)).double().parameters())]
    assert min(moved) > 1e-4  # every parameter was updated: the comparison is not of untouched weights


def test_every_method_puts_the_weight_prior_on_its_own_parameters_as_decay_precision_over_n():
    """wake-sleep (two optimizers), MCEM (decoder only) and full VB (point estimates only) hand
    their optimizers the parameters prior.scope names among those each one updates, decay alpha / N."""
    cfg = compose_config(["prior.precision=2.0", "model.latent_dim=2", "model.hidden=[5]"])
    model = build_vae(6, 2, [5], "bernoulli", 0.3, torch.Generator().manual_seed(2))
    n_train, cpu = 40, torch.device("cpu")

    def decayed(optimizer):
        return {id(p) for g in optimizer.param_groups if g["weight_decay"] == 2.0 / n_train for p in g["params"]}

    def weights(module):
        return {id(p) for p in prior_parameters(module.named_parameters(), "weights")}

    ws = wake_sleep.build(cfg, model, n_train, cpu)
    assert decayed(ws.wake_optimizer) == weights(model.decoder) and decayed(ws.sleep_optimizer) == weights(model.encoder)
    em = mcem.build(compose_config(["method=mcem", "prior.precision=2.0"]), model, n_train, cpu)
    assert decayed(em.optimizer) == weights(model.decoder)
    vb = full_vb.build(compose_config(["method=full_vb", "prior.precision=2.0"]), model, n_train, cpu)
    assert decayed(vb.optimizer) == weights(model.encoder)  # the decoder's theta is under q(theta), not a point prior


def test_a_stack_of_models_sums_eq_8_per_model_with_m_per_model():
    bounds = torch.tensor([[-1.0, -3.0], [-10.0, -20.0], [0.0, -2.0]])  # (K, M) = (3, 2)
    assert minibatch_bound(bounds, n_train=100).item() == 50 * (-4.0 - 30.0 - 2.0)
