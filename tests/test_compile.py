"""trainer.compile: the SGVB estimators at given noise, compiled, against the eager ones."""

import copy
import os
import shutil

import pytest
import torch

from conftest import compose_config
from vae_cli import aevb
from vae_cli.config import validate
from vae_cli.errors import UserError
from vae_cli.estimators import compiled, estimate, noise, sgvb_a, sgvb_b
from vae_cli.generators import training_generators
from vae_cli.models import build_vae
from vae_cli.stacked import build_models


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


@needs_compiler
@pytest.mark.parametrize("estimator", [sgvb_a, sgvb_b], ids=["sgvb_a", "sgvb_b"])
def test_the_compiled_estimator_gives_the_eager_bounds_and_gradients(estimator):
    model, x = _model(), torch.rand(16, 30, generator=torch.Generator().manual_seed(2))
    twin = copy.deepcopy(model)
    eps = noise(model, x, 2, torch.Generator().manual_seed(3))
    eager, fast = estimator(model, x, eps), compiled(estimator)(twin, x, eps)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)
    eager.sum().backward()
    fast.sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert q.grad is not None and p.grad.abs().max() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@needs_compiler
def test_aevb_with_trainer_compile_takes_the_eager_steps_to_rounding():
    def steps(compile_: bool):
        cfg = compose_config([f"trainer.compile={str(compile_).lower()}"])
        model = _model(seed=4)
        method = aevb.build(cfg, model, 1000, torch.device("cpu"))
        assert (method.estimator is sgvb_b) != compile_
        g, data = torch.Generator().manual_seed(5), torch.rand(4, 20, 30, generator=torch.Generator().manual_seed(6))
        bounds = [method.step(x, None, g) for x in data]
        return model, torch.stack(bounds)

    (eager_model, eager_bounds), (fast_model, fast_bounds) = steps(False), steps(True)
    torch.testing.assert_close(fast_bounds, eager_bounds, rtol=1e-5, atol=1e-4)
    for (name, p), q in zip(eager_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(eager_model.decoder.net.out.weight, _model(seed=4).decoder.net.out.weight)  # it trained


def test_a_compiler_that_fails_stops_the_first_step_with_one_line(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong trace ...")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model, x = _model(), torch.rand(4, 30)
    with pytest.raises(UserError, match=r"trainer.compile=true: torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working "
                                        r"C\+\+ compiler found\); set trainer.compile=false") as error:
        estimate(compiled(sgvb_b), model, x, 1, torch.Generator().manual_seed(0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["wake_sleep", "mcem", "full_vb"])
def test_trainer_compile_with_a_method_it_does_not_compile_is_refused_in_one_line(method):
    with pytest.raises(UserError, match=f"trainer.compile=true compiles the SGVB estimator of aevb's step; method={method} "
                                        "trains eagerly: set trainer.compile=false"):
        validate(compose_config([f"method={method}", "trainer.compile=true"]))
