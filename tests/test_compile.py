"""trainer.compile: AEVB's update compiled as one graph (compiled_update.py) against the eager step."""

import os
import shutil

import pytest
import torch

from conftest import compose_config
from vae_cli import aevb
from vae_cli.config import validate
from vae_cli.errors import UserError
from vae_cli.estimators import noise
from vae_cli.generators import training_generators
from vae_cli.models import build_vae
from vae_cli.optimizers import NonFiniteGuard
from vae_cli.stacked import build_models
from vae_cli.train import METHODS, optimizers_of


COMPILER = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
needs_compiler = pytest.mark.skipif(not COMPILER, reason="no C++ compiler on PATH: torch.compile's CPU backend needs one "
                                    "(the one-line refusal without it is tested below)")


def _model(seed: int = 0):
    return build_vae(30, 4, [16], "bernoulli", 0.3, torch.Generator().manual_seed(seed))


def test_noise_is_the_draw_rsample_makes_for_one_model_and_for_each_model_of_a_stack():
    """Drawing eps before the encoder (Algorithm 1) leaves every run's numbers as they were."""
    model, x = _model(), torch.rand(6, 30, generator=torch.Generator().manual_seed(1))
    q = model.encoder(x)
    torch.testing.assert_close(q.reparameterize(noise(model, x, 3, torch.Generator().manual_seed(7))),
                               q.rsample(3, torch.Generator().manual_seed(7)), rtol=0, atol=0)
    stack, members = build_models(lambda g: build_vae(30, 4, [16], "bernoulli", 0.3, g), 5, 3)
    eps = noise(stack, x.expand(3, 6, 30), 2, training_generators(5, 3, torch.device("cpu"))["noise"])
    assert eps.shape == (2, 3, 6, 4)
    for k in range(3):  # model k's slice is what a separate run with seed 5 + k draws
        alone = noise(members[k], x, 2, training_generators(5 + k, 1, torch.device("cpu"))["noise"])
        torch.testing.assert_close(eps[:, k], alone, rtol=0, atol=0)


def _initial(cfg):
    return build_models(lambda g: build_vae(30, 4, [16], cfg.model.decoder, 0.3, g), 4, cfg.trainer.n_models)[0]


def _stepped(overrides: list[str], n_steps: int = 4, poison: int | None = None):
    """A model of seed 4 (a stack when trainer.n_models > 1) after `n_steps` AEVB steps under `overrides`,
    the per-step bounds, the optimizer's state dict and the guard's report; step `poison` sees a NaN pixel."""
    cfg = compose_config(overrides)
    n_models = cfg.trainer.n_models
    model = _initial(cfg)
    method = METHODS[cfg.method.name](cfg, model, 1000, torch.device("cpu"))
    guard = NonFiniteGuard(optimizers_of(method), skip=cfg.trainer.on_nan == "skip_batch", device=torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    data = torch.rand(n_steps, *([n_models] if n_models > 1 else []), 20, 30, generator=torch.Generator().manual_seed(6))
    if poison is not None:
        data[poison, ..., 0, 3] = float("nan")
    bounds = []
    for x in data:
        bounds.append(method.step(x, None, g))
        guard.observe(bounds[-1], method.nonfinite_gradient)
    states = {name: o.state_dict()["state"] for name, o in vars(method).items() if isinstance(o, torch.optim.Optimizer)}
    return model, torch.stack(bounds), states, guard.collect(n_steps)


@needs_compiler
@pytest.mark.parametrize("overrides", [
    ["optimizer=adagrad"],  # the paper's, SGVB B
    ["optimizer=adam", "estimator=sgvb_a", "estimator.n_samples=2", "model.decoder=gaussian_sigmoid"],  # Frey Face's decoder
    ["optimizer=sgd", "optimizer.momentum=0.9", "trainer.n_models=2"],  # a stack: plain autograd in the graph
    ["method=wake_sleep"],  # two updates a step, each over half the parameters, fantasies drawn between them
    ["method=wake_sleep", "trainer.n_models=2", "model.decoder=gaussian"],
], ids=["adagrad-sgvb_b", "adam-sgvb_a-gaussian", "sgd-momentum-stack", "wake_sleep", "wake_sleep-stack-gaussian"])
def test_the_compiled_update_takes_the_eager_steps_and_keeps_torch_optims_state(overrides):
    eager_model, eager_bounds, eager_state, _ = _stepped(overrides)
    fast_model, fast_bounds, fast_state, report = _stepped([*overrides, "trainer.compile=true"])
    torch.testing.assert_close(fast_bounds, eager_bounds, rtol=1e-5, atol=1e-4)
    for (name, p), q in zip(eager_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    for optimizer, states in eager_state.items():  # the same entries, dtypes and values: checkpoints and resumes see no difference
        fast = fast_state[optimizer]
        assert fast.keys() == states.keys()
        for i, state in states.items():
            assert fast[i].keys() == state.keys()
            for key, value in state.items():
                assert fast[i][key].dtype == value.dtype and fast[i][key].shape == value.shape, (optimizer, i, key)
                torch.testing.assert_close(fast[i][key], value, rtol=1e-5, atol=1e-6, msg=f"{optimizer} {i} {key}")
    assert report.bad == 0
    again = _stepped([*overrides, "trainer.compile=true"])[0]  # same config and seed, same numbers bit for bit
    assert all(torch.equal(p, q) for p, q in zip(fast_model.parameters(), again.parameters()))
    initial = _initial(compose_config(overrides))
    assert not torch.equal(eager_model.decoder.net.out.weight, initial.decoder.net.out.weight)  # it trained


@needs_compiler
@pytest.mark.parametrize("method,on_nan", [("aevb", "skip_batch"), ("aevb", "stop"), ("wake_sleep", "skip_batch")])
def test_a_compiled_update_with_a_nonfinite_gradient_is_flagged_and_under_skip_batch_changes_nothing(method, on_nan):
    """A good step, then one whose minibatch holds a NaN pixel: the guard counts the second; skipped, its
    update leaves the parameters and state it covers bit for bit as the good step left them (AEVB: all of
    them; wake-sleep: the decoder's, whose wake update saw the NaN, while the sleep phase's fantasies
    are finite). Under stop the update is applied and the run ends at the guard's next read."""
    overrides = [f"method={method}", "trainer.compile=true", f"trainer.on_nan={on_nan}"]
    model, bounds, state, report = _stepped(overrides, n_steps=2, poison=1)
    assert report.bad == 1 and report.first_bad == 2
    assert torch.isfinite(bounds[0]).all() and torch.isnan(bounds[1]).any()
    good, _, good_state, _ = _stepped(overrides, n_steps=1)
    if on_nan == "stop":
        assert any(torch.isnan(p).any() for p in model.parameters())
        return
    skipped, optimizer = (model, "optimizer") if method == "aevb" else (model.decoder, "wake_optimizer")
    kept = good if method == "aevb" else good.decoder
    for (name, p), q in zip(skipped.named_parameters(), kept.parameters()):
        assert torch.equal(p, q), name
    for i, entries in good_state[optimizer].items():
        assert all(torch.equal(state[optimizer][i][key], value) for key, value in entries.items()), i  # "step" stays 1 too
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_compiler
def test_run_after_run_in_one_process_compiles_each_past_torchs_recompile_limit():
    """A basic-launcher multirun trains its jobs in one process: each compiles its own update."""
    limit = torch._dynamo.config.recompile_limit
    for seed in range(limit + 2):
        cfg = compose_config(["trainer.compile=true", f"seed={seed}"])
        method = aevb.build(cfg, build_vae(30, 4, [16], "bernoulli", 0.3, torch.Generator().manual_seed(seed)), 1000, torch.device("cpu"))
        bounds = method.step(torch.rand(20, 30), None, torch.Generator().manual_seed(seed))
        assert torch.isfinite(bounds).all() and method.nonfinite_gradient.item() == 0


def test_a_compiler_that_fails_stops_the_first_step_with_one_line(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong trace ...")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    method = aevb.build(compose_config(["trainer.compile=true"]), _model(), 1000, torch.device("cpu"))
    with pytest.raises(UserError, match=r"trainer.compile=true: torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working "
                                        r"C\+\+ compiler found\); set trainer.compile=false") as error:
        method.step(torch.rand(4, 30), None, torch.Generator().manual_seed(0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["mcem", "full_vb"])
def test_trainer_compile_with_a_method_it_does_not_compile_is_refused_in_one_line(method):
    with pytest.raises(UserError, match=f"trainer.compile=true compiles the updates of aevb and wake_sleep; method={method} "
                                        "trains eagerly: set trainer.compile=false"):
        validate(compose_config([f"method={method}", "trainer.compile=true"]))
