"""SGVB estimators A (eq. 6) and B (eq. 7), the minibatch estimator (eq. 8) and the MAP objective."""

import math

import torch

from helpers import linear_gaussian_vae, orthogonal_columns, set_exact_posterior_encoder
from vae_cli.estimators import (
    log_parameter_prior, map_objective, minibatch_bound, prior_parameters, sgvb_a, sgvb_b,
)
from vae_cli.models import build_vae


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
    return estimator(model, x.repeat(n_draws, 1), 1, g).view(n_draws, x.shape[0])


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
            big_l = estimator(model, x, 20_000, g)
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
            torch.testing.assert_close(sgvb_a(model, x, 5, g), exact, rtol=0, atol=1e-9)
        # B at the optimum: KL(q || p(z)) is exact, E log p(x|z) estimated; mean over draws is log p(x)
        b = _draws(sgvb_b, model, x, 20_000, g)
    assert ((b.mean(0) - exact).abs() < 4 * b.std(0) / math.sqrt(20_000)).all()


def test_minibatch_estimator_scales_by_n_over_m():
    bounds = torch.tensor([-1.0, -2.0, -3.0, -6.0])
    assert minibatch_bound(bounds, n_train=100).item() == -300.0  # (N/M) sum = 25 * -12


def test_map_objective_adds_the_weight_prior_over_the_whole_data_set():
    g = torch.Generator().manual_seed(4)
    model = build_vae(5, 2, [4], "bernoulli", 0.3, g).double()
    weights = prior_parameters(model.named_parameters(), "weights")
    assert len(weights) == 4 and all(p.ndim == 2 for p in weights)  # enc: W3, [W4;W5]; dec: W1, W2
    assert len(prior_parameters(model.named_parameters(), "all")) == 8
    assert prior_parameters(model.named_parameters(), "none") == []
    precision, n_train = 2.0, 50
    expected_log_prior = -0.5 * precision * sum((p**2).sum() for p in weights)
    torch.testing.assert_close(log_parameter_prior(weights, precision), expected_log_prior)
    bounds = torch.randn(10, generator=g, dtype=torch.float64)
    objective = map_objective(bounds, log_parameter_prior(weights, precision), n_train)
    torch.testing.assert_close(objective, bounds.mean() + expected_log_prior / n_train)
    # its gradient on a weight matrix is the prior's -precision * W / N
    objective.backward()
    W = model.decoder.net.out.weight
    torch.testing.assert_close(W.grad, -precision * W.detach() / n_train)


def test_the_weight_prior_gradient_is_autograds_of_the_sum_of_squares_bit_for_bit():
    """SquaredNorm saves passes over the weights without changing a bit of any run's numbers."""
    g = torch.Generator().manual_seed(5)
    for p in (torch.randn(3, 500, 784, generator=g) * 0.01, torch.randn(7, generator=g) * 1e-36):  # subnormal g p too
        ours, theirs = p.clone().requires_grad_(), p.clone().requires_grad_()
        (log_parameter_prior([ours], 0.7) / 50000).backward()
        (-0.5 * 0.7 * torch.stack([(theirs * theirs).sum()]).sum() / 50000).backward()
        assert torch.equal(ours.grad, theirs.grad)


def test_a_stack_of_models_sums_eq_8_per_model_with_m_per_model():
    bounds = torch.tensor([[-1.0, -3.0], [-10.0, -20.0], [0.0, -2.0]])  # (K, M) = (3, 2)
    assert minibatch_bound(bounds, n_train=100).item() == 50 * (-4.0 - 30.0 - 2.0)
