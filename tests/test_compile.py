"""speed.compile: each update of a method compiled as one graph (accel/compiled.py) against the eager step.

The compiled update differentiates the same objective with torch.func and runs torch.optim's own
functional kernel on the optimizer's own state, in one graph; the draws stay eager and in the eager
order. So after a few steps parameters, optimizer state and shown bounds equal the eager ones to
float32 rounding, the warm-up holds the parameters as eagerly, and a skipped update changes nothing.
"""

import os
import shutil

import pytest
import torch

from conftest import compose_config
from vae_cli.accel.compiled import compiled_steps
from vae_cli.config import validate
from vae_cli.errors import UserError
from vae_cli.estimators import noise
from vae_cli.generators import init_generator
from vae_cli.methods import METHODS, Minibatch, take_step
from vae_cli.models import build_vae
from vae_cli.optim import NonFiniteGuard

COMPILER = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
needs_compiler = pytest.mark.skipif(not COMPILER, reason="no C++ compiler on PATH: torch.compile's CPU backend needs one "
                                    "(the one-line refusal without it is tested below)")
CPU = torch.device("cpu")
SMALL = ["model.hidden=[16]", "model.latent_dim=4", "model.init_std=0.3"]
# Compiled and eager kernels may sum, fuse and vectorise in other orders: each float32 result can differ
# in its last bits (eps = 1.2e-7), and five optimizer steps (Adagrad and Adam divide the gradient by a root
# of its own square, so relative errors pass through about unchanged) leave parameters and state a few
# hundred ulp apart at most: 1e-5 relative, with an absolute floor of 1e-6 for entries near 0 (all the
# parameters here are of order 0.3). The shown bounds are sums over 30 pixels of terms of order 1-10,
# hence the floor of 1e-4 nats there. A wrong update (a missed step, another stepsize, a stale state) moves
# entries by ~1e-2.
PARAMS = {"rtol": 1e-5, "atol": 1e-6}
BOUNDS = {"rtol": 1e-5, "atol": 1e-4}


def _model(seed: int = 0):
    return build_vae(30, compose_config(SMALL).model, init_generator(seed))


def test_noise_is_the_draw_rsample_makes():
    """Drawing eps before the encoder (Algorithm 1), outside the compiled graph, leaves every run's numbers as they were."""
    model, x = _model(), torch.rand(6, 30, generator=torch.Generator().manual_seed(1))
    q = model.encoder(x)
    torch.testing.assert_close(q.reparameterize(noise(model, x, 3, torch.Generator().manual_seed(7))),
                               q.rsample(3, torch.Generator().manual_seed(7)), rtol=0, atol=0)


def _stepped(overrides: list[str], n_steps: int = 5, poison: int | None = None):
    """A model of seed 4 after `n_steps` steps of its method under `overrides` (compiled with
    speed.compile=true): the model, the per-step bounds, the parameters after each step, the optimizers'
    state dicts and the guard's report; step `poison` (from 0) sees a NaN pixel."""
    cfg = compose_config([*SMALL, *overrides])
    model = build_vae(30, cfg.model, init_generator(4))
    method = METHODS[cfg.method.name].build(cfg, model, 1000, CPU, torch.Generator().manual_seed(3))
    step = compiled_steps(method) if cfg.speed.compile else take_step
    guard, g = NonFiniteGuard(CPU), torch.Generator().manual_seed(5)
    data = torch.rand(n_steps, 20, 30, generator=torch.Generator().manual_seed(6))
    if poison is not None:
        data[poison, 0, 3] = float("nan")
    bounds, after = [], []
    for x in data:
        shown, bad = step(method, Minibatch(x, torch.arange(20)), g)
        guard.observe(shown, bad)
        bounds.append(shown)
        after.append([p.detach().clone() for p in model.parameters()])
    states = {name: o.state_dict()["state"] for name, o in method.optimizers.items()}
    return model, torch.stack(bounds), after, states, guard.collect(n_steps)


@needs_compiler
@pytest.mark.parametrize("overrides", [  # slow: each compiles for tens of seconds; train_throughput.py runs the compiled step
    pytest.param(["optimizer=adagrad", "optimizer.warmup_steps=0"], marks=pytest.mark.slow),  # the paper's, SGVB B
    pytest.param(["optimizer=adam", "estimator=sgvb_a", "estimator.n_samples=2", "model.decoder=gaussian_sigmoid"],  # Frey's decoder
                 marks=pytest.mark.slow),
    pytest.param(["optimizer=sgd", "optimizer.momentum=0.9"], marks=pytest.mark.slow),  # a state tensor created before the first step
    ["method=wake_sleep", "optimizer.warmup_steps=0"],  # two updates a step, each over half the parameters, fantasies drawn between them
    ["optimizer=adagrad", "optimizer.warmup_steps=3"],  # the author's warm-up: the first 3 updates accumulate and move nothing
], ids=["adagrad-sgvb_b", "adam-sgvb_a-gaussian_sigmoid", "sgd-momentum", "wake_sleep", "adagrad-warmup"])
def test_the_compiled_update_takes_the_eager_steps_and_keeps_torch_optims_state(overrides):
    eager_model, eager_bounds, eager_after, eager_state, _ = _stepped(overrides)
    fast_model, fast_bounds, fast_after, fast_state, report = _stepped([*overrides, "speed.compile=true"])
    torch.testing.assert_close(fast_bounds, eager_bounds, **BOUNDS)
    for (name, p), q in zip(eager_model.named_parameters(), fast_model.parameters(), strict=True):
        torch.testing.assert_close(q, p, **PARAMS, msg=name)
    for optimizer, states in eager_state.items():  # the same entries, dtypes and values: checkpoints and resumes see no difference
        fast = fast_state[optimizer]
        assert fast.keys() == states.keys()
        for i, state in states.items():
            assert fast[i].keys() == state.keys()
            for key, value in state.items():
                assert fast[i][key].dtype == value.dtype and fast[i][key].shape == value.shape, (optimizer, i, key)
                torch.testing.assert_close(fast[i][key], value, **PARAMS, msg=f"{optimizer} {i} {key}")
    assert report.bad == 0
    initial = [p.detach() for p in _model(4).parameters()]
    warmup = compose_config(overrides).optimizer.warmup_steps
    for step in range(warmup):  # the warm-up holds every parameter, compiled as eagerly, bit for bit
        assert all(torch.equal(p, q) for p, q in zip(fast_after[step], initial)), step
        assert all(torch.equal(p, q) for p, q in zip(eager_after[step], initial)), step
    moved = [not torch.equal(p, q) for p, q in zip(fast_model.parameters(), initial)]
    assert all(moved), "a parameter did not move"  # it trained, past any warm-up
    again = _stepped([*overrides, "speed.compile=true"])[0]  # same config and seed, same numbers bit for bit
    assert all(torch.equal(p, q) for p, q in zip(fast_model.parameters(), again.parameters()))


@needs_compiler
@pytest.mark.parametrize("method,on_nan", [("aevb", "skip_batch"), pytest.param("aevb", "stop", marks=pytest.mark.slow),
                                           pytest.param("wake_sleep", "skip_batch", marks=pytest.mark.slow)])
def test_a_compiled_update_with_a_nonfinite_gradient_is_flagged_and_under_skip_batch_changes_nothing(method, on_nan):
    """A good step, then one whose minibatch holds a NaN pixel: the guard counts the second; skipped, its
    update leaves the parameters and state it covers bit for bit as the good step left them (AEVB: all of
    them; wake-sleep: the decoder's, whose wake update saw the NaN, while the sleep phase's fantasies
    are finite). Under stop the update is applied and the run ends at the guard's next read."""
    overrides = [f"method={method}", "optimizer.warmup_steps=0", "speed.compile=true", f"trainer.on_nan={on_nan}"]
    model, bounds, _, state, report = _stepped(overrides, n_steps=2, poison=1)
    assert report.bad == 1 and report.first_bad == 2
    assert torch.isfinite(bounds[0]).all() and torch.isnan(bounds[1]).any()
    good, _, _, good_state, _ = _stepped(overrides, n_steps=1)
    if on_nan == "stop":
        assert any(torch.isnan(p).any() for p in model.parameters())
        return
    skipped, optimizer = (model, "theta_phi") if method == "aevb" else (model.decoder, "wake")
    kept = good if method == "aevb" else good.decoder
    for (name, p), q in zip(skipped.named_parameters(), kept.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert state[optimizer].keys() == good_state[optimizer].keys()
    for i, entries in good_state[optimizer].items():
        assert all(torch.equal(state[optimizer][i][key], value) for key, value in entries.items()), i  # "step" stays 1 too
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if method == "wake_sleep":  # the sleep update saw finite fantasies and was taken
        assert not all(torch.equal(p, q) for p, q in zip(model.encoder.parameters(), good.encoder.parameters()))


@needs_compiler
@pytest.mark.slow  # ten compilations; a multirun of compiled jobs in one process is the documented case
def test_run_after_run_in_one_process_compiles_each_past_torchs_recompile_limit():
    """A basic-launcher multirun trains its jobs in one process: each compiles its own update."""
    limit = torch._dynamo.config.recompile_limit
    for seed in range(limit + 2):
        cfg = compose_config([*SMALL, "speed.compile=true", f"seed={seed}"])
        method = METHODS["aevb"].build(cfg, build_vae(30, cfg.model, init_generator(seed)), 1000, CPU, None)
        shown, bad = compiled_steps(method)(method, Minibatch(torch.rand(20, 30), torch.arange(20)), torch.Generator().manual_seed(seed))
        assert torch.isfinite(shown).all() and bad.item() == 0


def test_a_compiler_that_fails_stops_the_first_step_with_one_line(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong trace ...")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    cfg = compose_config([*SMALL, "speed.compile=true"])
    method = METHODS["aevb"].build(cfg, _model(), 1000, CPU, None)
    step = compiled_steps(method)
    with pytest.raises(UserError, match=r"speed.compile=true: torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working "
                                        r"C\+\+ compiler found\); set speed.compile=false") as error:
        step(method, Minibatch(torch.rand(4, 30), torch.arange(4)), torch.Generator().manual_seed(0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["mcem", "full_vb"])
def test_speed_compile_with_a_method_it_does_not_compile_is_refused_in_one_line(method):
    with pytest.raises(UserError, match=f"speed.compile=true: method={method} trains eagerly only; set speed.compile=false") as error:
        validate(compose_config([f"method={method}", "speed.compile=true"]))
    assert "\n" not in str(error.value)
