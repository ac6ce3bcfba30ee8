"""The Python API (`vae_cli.load_run`, `vae_cli.load_sweep`) on real small runs of every method.

A run's last metrics row recomputed through the API equals the logged one (the same code, the same
generator), its likelihood estimates equal vae-eval's on the same points and seed, and the helpers a
notebook reaches for have the shapes and determinism they promise. The README's example runs as written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vae_cli
from conftest import REPO, compose_config
from helpers import run_training
from vae_cli.jobs.evaluate import evaluate

TINY = ["trainer.max_samples=2e3", "evaluation.schedule=linear", "evaluation.every=1e3", "evaluation.train_points=200",
        "evaluation.test_points=200", "evaluation.loglik_points=20", "model.hidden=[32]", "model.latent_dim=3",
        "dataset.n_train=500", "speed.threads=1"]
RUNS = {"aevb": [], "wake_sleep": ["method=wake_sleep"], "mcem": ["method=mcem"], "full_vb": ["method=full_vb", "method.eval_draws=2"],
        "stack": ["speed.n_models=2"], "frey": ["dataset=frey"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("api")
    for name, extra in RUNS.items():
        run_training(folder, name, *TINY, *extra, data_root=shared_data)
    return folder


def curves(row: dict) -> dict:
    return {k: row[k] for k in ("train_bound", "test_bound", "train_loglik", "test_loglik", "kl_theta") if row.get(k) is not None}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_runs_last_evaluation_recomputed_through_the_api_equals_the_logged_one(runs, name):
    run = vae_cli.load_run(runs / name)
    for member in range(run.n_models):
        logged = [r for r in run.metrics if r.get("model", 0) == member][-1]
        assert curves(run.evaluate(member)) == curves(logged), member
        assert curves(logged)  # something was compared


def test_encode_decode_sample_and_reconstruct_have_their_shapes_and_a_generator_makes_them_repeatable(runs):
    run = vae_cli.load_run(runs / "aevb")
    x = run.data("test")[:7]
    mean, var = run.encode(x)
    assert mean.shape == var.shape == (7, 3) and (var > 0).all()
    assert run.decode(mean).shape == run.reconstruct(x).shape == (7, 784)
    assert ((run.decode(mean) >= 0) & (run.decode(mean) <= 1)).all()  # Bernoulli means
    z1, x1 = run.sample(5, torch.Generator().manual_seed(4))
    z2, x2 = run.sample(5, torch.Generator().manual_seed(4))
    z3, _ = run.sample(5, torch.Generator().manual_seed(5))
    assert z1.shape == (5, 3) and x1.shape == (5, 784)
    assert torch.equal(z1, z2) and torch.equal(x1, x2) and not torch.equal(z1, z3)
    assert torch.allclose(run.reconstruct(x), run.decode(run.encode(x)[0]))


def test_a_stack_runs_models_are_its_members_and_mcem_has_no_encoder(runs):
    stack = vae_cli.load_run(runs / "stack")
    x = stack.data("test")[:4]
    assert stack.n_models == 2 and not torch.equal(stack.encode(x, member=0)[0], stack.encode(x, member=1)[0])
    with pytest.raises(vae_cli.api.UserError, match="learns no q\\(z\\|x\\)"):
        vae_cli.load_run(runs / "mcem").encode(x)


@pytest.mark.parametrize("estimator,settings", [("iwae", {"k": 50}), ("elbo", {"n_samples": 20}), ("ais", {"n_steps": 20, "n_chains": 2})])
def test_the_apis_likelihood_estimate_is_vae_evals(runs, estimator, settings):
    run = vae_cli.load_run(runs / "aevb")
    cfg = compose_config(["run_dir=" + str(runs / "aevb"), f"likelihood={estimator}", "n_points=30", "seed=3",
                          *[f"likelihood.{k}={v}" for k, v in settings.items()]], config_name="eval")
    written = evaluate(cfg)
    ours = run.log_likelihood(run.data("test")[:30], estimator, generator=torch.Generator().manual_seed(3), **settings)
    assert np.array_equal(ours.log_px.numpy(), np.load(written["paths"][".npy"]))


def test_metrics_frame_and_the_eval_summaries_are_data(runs):
    run = vae_cli.load_run(runs / "frey")
    frame = run.metrics_frame()
    assert list(frame["samples"]) == [r["samples"] for r in run.metrics]
    assert {"train_bound", "test_bound"} <= set(frame.columns)
    assert run.evaluations() == []
    cfg = compose_config(["run_dir=" + str(runs / "frey"), "likelihood=elbo", "likelihood.n_samples=10", "n_points=15"], config_name="eval")
    written = evaluate(cfg)
    (summary,) = run.evaluations()
    assert summary["estimator"] == "elbo" and summary["points"] == 15 and summary["log_px"] == written["log_px"]


def test_load_sweep_groups_runs_as_the_report_does(runs):
    """Six runs, five configs: the stack's model 0 is the aevb run's seed 0 (counted once), its model 1 seed 1."""
    sweep = vae_cli.load_sweep(runs)
    labels = [g.label for g in sweep.groups]
    assert len(sweep.groups) == 5 and len(set(labels)) == 5
    (aevb,) = [g for g in sweep.groups if g.seeds == [0, 1]]
    assert {r.path.name for r in aevb.runs} == {"aevb", "stack"} and len(sweep.duplicates) == 1


def test_the_readmes_python_example_runs(runs, monkeypatch):
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(runs)
    example = re.sub(r'"outputs/[^"]+"', repr(str(runs / "aevb")), example)
    example = re.sub(r'"multirun/[^"]+"', repr(str(runs)), example)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert "run" in namespace


def test_load_run_of_a_folder_without_a_run_is_one_line(tmp_path):
    with pytest.raises(vae_cli.api.UserError) as info:
        vae_cli.load_run(tmp_path)
    assert "\n" not in str(info.value) and "checkpoint" in str(info.value)


def test_the_package_imports_without_torch_until_the_api_is_used():
    import subprocess
    import sys

    code = "import sys, vae_cli; assert 'torch' not in sys.modules; vae_cli.load_run; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(REPO).parent).returncode == 0
