"""SGVB estimators A (eq. 6) and B (eq. 7), the minibatch estimator (eq. 8) and the MAP objective."""

import copy
import math

import pytest
import torch

from conftest import compose_config
from helpers import build_vae, linear_gaussian_vae, orthogonal_columns, set_exact_posterior_encoder
from vae_cli.estimators import estimate, log_weight_prior, map_objective, minibatch_bound, sgvb_a, sgvb_b
from vae_cli.methods import Minibatch, aevb, full_vb, mcem, take_step, wake_sleep
from vae_cli.optim import apply_gradients, build_optimizer, map_optimizer, weight_prior

CPU = torch.device("cpu")
F64 = torch.float64


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
    weights = weight_prior(model.named_parameters(), "weights")
    assert len(weights) == 4 and all(p.ndim == 2 for p in weights)  # enc: W3, [W4;W5]; dec: W1, W2
    assert len(weight_prior(model.named_parameters(), "all")) == 8
    assert weight_prior(model.named_parameters(), "none") == []
    bounds = torch.randn(10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(map_objective(bounds, 50), bounds.mean())  # (1/N) (N/M) sum_i
    # log p(theta) = -precision/2 ||theta||^2 over exactly the parameters given
    torch.testing.assert_close(log_weight_prior(weights, 2.0), -1.0 * sum((p**2).sum() for p in weights))


@pytest.mark.parametrize("scope", ["weights", "all", "none"])
@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_aevb_steps_follow_the_gradient_of_eq8_plus_the_weight_prior(optimizer, scope):
    """Five AEVB steps (the prior as the optimizer's weight decay, two of warm-up) equal five updates of
    the same optimizer and schedule on autograd's gradient of the whole MAP objective
    (1/N) [eq. (8) + log p(theta)], log p(theta) = -precision/2 ||theta||^2 written out here (AEVB §5)."""
    precision, n_train = 3.0, 40
    cfg = compose_config([f"optimizer={optimizer}", f"prior.precision={precision}", f"prior.scope={scope}", "optimizer.warmup_steps=2",
                          *(["optimizer.momentum=0.9"] if optimizer == "sgd" else [])])
    model = build_vae(6, 2, [5], "bernoulli", 0.3, torch.Generator().manual_seed(2)).double()
    reference = copy.deepcopy(model)
    method = aevb.build(cfg, model, n_train, CPU, torch.Generator())
    by_hand, schedule = build_optimizer(cfg.optimizer, reference.parameters(), CPU)  # no weight decay
    covered = weight_prior(reference.named_parameters(), scope)
    x = torch.rand(5, 8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours_noise, their_noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for batch in x:
        take_step(method, Minibatch(batch, torch.arange(8)), ours_noise)
        log_prior = -0.5 * precision * sum((p**2).sum() for p in covered) if covered else torch.zeros(())
        objective = minibatch_bound(estimate(sgvb_b, reference, batch, 1, their_noise), n_train) / n_train + log_prior / n_train
        by_hand.zero_grad()
        (-objective).backward()
        apply_gradients(by_hand, schedule, skip_nonfinite=False)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-13, msg=name)
    moved = [(p - q).abs().max().item() for p, q in zip(model.parameters(), build_vae(6, 2, [5], "bernoulli", 0.3,
             torch.Generator().manual_seed(2)).double().parameters())]
    assert min(moved) > 1e-4  # every parameter was updated: the comparison is not of untouched weights


def test_every_method_puts_the_weight_prior_on_its_own_parameters_as_decay_precision_over_n():
    """wake-sleep (two optimizers), MCEM (decoder only) and full VB (point estimates only) hand
    their optimizers the parameters prior.scope names among those each one updates, decay alpha / N."""
    cfg = compose_config(["method=wake_sleep", "prior.precision=2.0", "model.latent_dim=2", "model.hidden=[5]"])
    model = build_vae(6, 2, [5], "bernoulli", 0.3, torch.Generator().manual_seed(2))
    n_train = 40

    def decayed(optimizer):
        return {id(p) for g in optimizer.param_groups if g["weight_decay"] == 2.0 / n_train for p in g["params"]}

    def undecayed(optimizer):
        return {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}

    def ids(parameters):
        return {id(p) for p in parameters}

    def weights(module):
        return ids(weight_prior(module.named_parameters(), "weights"))

    ws = wake_sleep.build(cfg, model, n_train, CPU, torch.Generator())
    wake, sleep = ws.optimizers["wake"], ws.optimizers["sleep"]
    assert decayed(wake) == weights(model.decoder) and decayed(sleep) == weights(model.encoder)
    assert decayed(wake) | undecayed(wake) == ids(model.decoder.parameters())
    assert decayed(sleep) | undecayed(sleep) == ids(model.encoder.parameters())
    em = mcem.build(compose_config(["method=mcem", "prior.precision=2.0"]), model, n_train, CPU, torch.Generator())
    assert decayed(em.optimizers["theta"]) == weights(model.decoder)
    assert decayed(em.optimizers["theta"]) | undecayed(em.optimizers["theta"]) == ids(model.decoder.parameters())
    vb = full_vb.build(compose_config(["method=full_vb", "prior.precision=2.0"]), model, n_train, CPU, torch.Generator())
    assert decayed(vb.optimizers["phi"]) == weights(model.encoder)  # the decoder's theta is under q(theta), not a point prior
    in_q = ids([*vb.posterior.mean.values(), *vb.posterior.parameters()])
    assert undecayed(vb.optimizers["phi"]) == in_q | (ids(model.encoder.parameters()) - weights(model.encoder))


def test_the_weight_decay_is_the_gradient_of_log_weight_prior_over_n_on_the_weight_matrices():
    """The decay the optimizer adds, (precision / N) theta, is minus the gradient of
    `estimators.log_weight_prior` / N, on exactly the parameters `weight_prior(..., "weights")` names
    (the matrices): one SGD step (stepsize 1, no data gradient) moves theta by that gradient."""
    precision, n_train = 3.0, 40
    cfg = compose_config(["optimizer=sgd", "optimizer.lr=1.0", f"prior.precision={precision}", "prior.scope=weights"])
    model = build_vae(6, 2, [5], "gaussian", 0.3, torch.Generator().manual_seed(4)).double()
    named = list(model.named_parameters())
    covered = weight_prior(named, "weights")
    assert {n for n, p in named if any(p is c for c in covered)} == {n for n, p in named if p.ndim == 2}
    grads = torch.autograd.grad(log_weight_prior(covered, precision) / n_train, [p for _, p in named], allow_unused=True)
    before = [p.detach().clone() for _, p in named]
    optimizer, schedule = map_optimizer(cfg, named, n_train, CPU)
    for _, p in named:
        p.grad = torch.zeros_like(p)
    apply_gradients(optimizer, schedule, skip_nonfinite=False)
    for (name, p), old, grad in zip(named, before, grads):
        expected = torch.zeros_like(p) if grad is None else grad  # gradient ascent on log p(theta) / N
        torch.testing.assert_close(p.detach() - old, expected, rtol=1e-12, atol=1e-15, msg=name)
        assert (grad is None) == (p.ndim == 1), name  # biases (ndim 1) are outside the prior
    torch.testing.assert_close(grads[0], -precision / n_train * before[0], rtol=1e-12, atol=0)


def _adagrad(warmup: int, lr: float = 0.1, **overrides):
    cfg = compose_config(["optimizer=adagrad", f"optimizer.lr={lr}", f"optimizer.warmup_steps={warmup}",
                          *(f"optimizer.{k}={v}" for k, v in overrides.items())])
    return cfg.optimizer


def test_adagrad_warm_up_accumulates_squared_gradients_without_moving_then_steps_as_adagrad():
    """[K]'s warm-up (PAPER.md §12.1): during the first W updates no parameter moves, bit for bit,
    while the accumulator sums g^2 (from its initial value); update W + 1 moves each parameter by
    lr g / (sqrt(init + sum_{t <= W+1} g_t^2) + eps), Adagrad's formula."""
    W, lr = 4, 0.1
    cfg = _adagrad(W, lr, eps=1e-3, initial_accumulator_value=0.5)  # both large, so that their place in the formula shows
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(3, 4, generator=g, dtype=F64).requires_grad_(), torch.randn(5, generator=g, dtype=F64).requires_grad_()]
    start = [p.detach().clone() for p in params]
    optimizer, schedule = build_optimizer(cfg, params, CPU)
    grads = [[torch.randn(p.shape, generator=g, dtype=F64) for p in params] for _ in range(W + 1)]
    for t in range(W):
        for p, grad in zip(params, grads[t]):
            p.grad = grad.clone()
        apply_gradients(optimizer, schedule, skip_nonfinite=False)
        assert all(torch.equal(p.detach(), s) for p, s in zip(params, start)), t
    for i, p in enumerate(params):
        accumulated = 0.5 + sum(grads[t][i] ** 2 for t in range(W))
        torch.testing.assert_close(optimizer.state[p]["sum"], accumulated, rtol=1e-14, atol=0)
    for p, grad in zip(params, grads[W]):
        p.grad = grad.clone()
    apply_gradients(optimizer, schedule, skip_nonfinite=False)
    for i, (p, s) in enumerate(zip(params, start)):
        total = 0.5 + sum(grads[t][i] ** 2 for t in range(W + 1))
        torch.testing.assert_close(p.detach() - s, -lr * grads[W][i] / (total.sqrt() + 1e-3), rtol=1e-12, atol=1e-15)


def test_adagrad_with_the_authors_constants_takes_his_step_after_the_warm_up():
    """initial_accumulator_value 1e-8 and eps 1e-10 (the defaults): the step after W updates equals
    [K]'s g / sqrt(sum g^2 + 1e-8) to 1e-6 relative, on gradients small enough (1e-5) that a missing
    1e-8 would be off by far more."""
    cfg = compose_config([])
    W, lr = cfg.optimizer.warmup_steps, cfg.optimizer.lr
    assert (W, cfg.optimizer.initial_accumulator_value, cfg.optimizer.eps) == (10, 1e-8, 1e-10)  # reading=author_code
    g = torch.Generator().manual_seed(6)
    scales = torch.logspace(-5, 0, 6, dtype=F64)  # one parameter per gradient scale
    theta = torch.zeros(6, dtype=F64, requires_grad=True)
    optimizer, schedule = build_optimizer(cfg.optimizer, [theta], CPU)
    grads = [torch.randn(6, generator=g, dtype=F64) * scales for _ in range(W + 1)]
    for grad in grads:
        theta.grad = grad.clone()
        apply_gradients(optimizer, schedule, skip_nonfinite=False)
    squares = sum(grad**2 for grad in grads)
    kingma = lr * grads[-1] / torch.sqrt(squares + 1e-8)  # ascent on -theta's objective: theta moves by -kingma
    relative = ((theta.detach() + kingma) / kingma).abs()
    assert (relative < 1e-6).all(), relative
    without = lr * grads[-1] / (squares.sqrt() + 1e-10)  # plain Adagrad from an accumulator of 0
    assert ((without - kingma) / kingma).abs().max() > 1e-2


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
def test_no_optimizer_moves_a_parameter_during_its_warm_up(optimizer):
    cfg = compose_config([f"optimizer={optimizer}", "optimizer.warmup_steps=3", *(["optimizer.momentum=0.9"] if optimizer == "sgd" else [])])
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(8, generator=g, dtype=F64, requires_grad=True)
    start = theta.detach().clone()
    opt, schedule = build_optimizer(cfg.optimizer, [theta], CPU, decayed=[theta], weight_decay=0.5)
    for _ in range(3):
        theta.grad = torch.randn(8, generator=g, dtype=F64)
        apply_gradients(opt, schedule, skip_nonfinite=False)
        assert torch.equal(theta.detach(), start)
    theta.grad = torch.randn(8, generator=g, dtype=F64)
    apply_gradients(opt, schedule, skip_nonfinite=False)
    assert (theta.detach() != start).all()


def test_a_stack_of_models_sums_eq_8_per_model_with_m_per_model():
    bounds = torch.tensor([[-1.0, -3.0], [-10.0, -20.0], [0.0, -2.0]])  # (K, M) = (3, 2)
    assert minibatch_bound(bounds, n_train=100).item() == 50 * (-4.0 - 30.0 - 2.0)
