"""`device=cuda` end to end: every method, a stack, the compiled update and vae-eval on a GPU.

These run where torch sees a CUDA device and skip with the reason elsewhere. On the GPU the data,
parameters, generators and optimizer state live on the device; a run's numbers differ from the CPU's
by the devices' random streams only, so the checks are: it trains (the bound rises), it is
deterministic (the same seed twice gives identical metrics), and it resumes exactly.
"""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from helpers import run_training, straight_and_resumed, without_wall_clock
from vae_cli.jobs.evaluate import evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to torch: device=cuda is checked on a machine with one (benchmarks/gpu.py)")

SMALL = ["device=cuda", "trainer.max_samples=1e4", "evaluation.first=2e3", "dataset.n_train=2000", "model.hidden=[100]"]
METHODS = {"aevb": [], "wake_sleep": ["method=wake_sleep"], "mcem": ["method=mcem", "model.latent_dim=3", "evaluation.loglik_points=50"],
           "full_vb": ["method=full_vb"], "stack": ["speed.n_models=3"], "compiled": ["speed.compile=true"]}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_the_gpu_and_the_same_seed_gives_identical_metrics(tmp_path, shared_data, name):
    _, first = run_training(tmp_path, "a", *SMALL, *METHODS[name], data_root=shared_data)
    _, second = run_training(tmp_path, "b", *SMALL, *METHODS[name], data_root=shared_data)
    assert without_wall_clock(first) == without_wall_clock(second)
    curve = "test_loglik" if name == "mcem" else "test_bound"
    assert first[-1][curve] > first[0][curve] + 50


@pytest.mark.parametrize("name", ["aevb", "wake_sleep", "stack"])
def test_a_gpu_run_resumes_exactly(tmp_path, shared_data, name):
    straight_and_resumed(tmp_path, "device=cuda", "dataset.n_train=1500", "evaluation.first=1e3", "trainer.checkpoint_every=1e3",
                         *METHODS[name], data_root=shared_data)


@pytest.mark.parametrize("likelihood", ["iwae", "ais", "appendix_d", "bdmc"])
def test_vae_eval_runs_on_the_gpu(tmp_path, shared_data, likelihood):
    run_training(tmp_path, "run", *SMALL, "model.latent_dim=3", data_root=shared_data)
    small = {"iwae": ["likelihood.k=100"], "ais": ["likelihood.n_steps=20"], "appendix_d": ["likelihood.n_samples=10"],
             "bdmc": ["likelihood.steps=[10,30]", "likelihood.n_points=20", "likelihood.others=[iwae]"]}[likelihood]
    cfg = compose_config([f"run_dir={tmp_path / 'run'}", f"likelihood={likelihood}", "device=cuda", "n_points=50", *small], config_name="eval")
    summary = evaluate(cfg)
    assert summary["device"].startswith("cuda")
