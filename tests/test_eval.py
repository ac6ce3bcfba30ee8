"""`vae-eval` end to end through the installed script, on tiny runs trained on the real data:
what it writes, that it never overwrites, a sweep over the four estimators, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config
from vae_cli.config import validate_eval
from vae_cli.errors import UserError
from vae_cli.eval_run import evaluate
from vae_cli.train import train

SCRIPT = Path(sys.executable).parent / "vae-eval"
TINY = ["trainer=debug", "dataset.n_train=1000", "trainer.max_samples=2e3", "trainer.eval_first=1e3",
        "trainer.progress=false", "trainer.figures=false"]
QUICK = ["n_points=3", "threads=1"]


def vae_eval(*args: str, cwd: Path, data: Path) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package with the README's command"
    env = {**os.environ, "VAE_CLI_DATA": str(data)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _train(folder: Path, data: Path, *overrides: str) -> Path:
    cfg = compose_config([*TINY, f"dataset.root={data}", *overrides])
    train(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, shared_data):
    """MNIST, Nz=20, 500 hidden units, 2000 training samples."""
    return _train(tmp_path_factory.mktemp("eval") / "vae", shared_data)


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory, shared_data):
    """MNIST under the linear-Gaussian model with Nz=2: its exact log p(x) is known."""
    return _train(tmp_path_factory.mktemp("eval") / "linear", shared_data, "model=linear_gaussian", "model.latent_dim=2")


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_an_evaluation_prints_a_row_and_writes_summary_estimates_and_details(vae_run, shared_data, tmp_path):
    result = vae_eval(f"run_dir={vae_run}", "likelihood.k=50", "likelihood.k_curve=true", *QUICK, cwd=tmp_path, data=shared_data)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["estimator", "split", "points", "log"] and row.split()[:3] == ["iwae", "test", "3"]
    summary = json.loads((vae_run / "eval" / "iwae-test-001.json").read_text())
    assert summary["points"] == 3 and summary["settings"]["k"] == 50 and summary["samples"] == 2000
    # chunk_size null resolved: as many samples as keep (samples, 3 points, 784) float32 tensors within 16 MiB
    assert summary["settings"]["chunk_size"] is None and summary["settings"]["samples_per_chunk"] == 16 * 2**20 // (3 * 784 * 4)
    estimates = np.load(vae_run / "eval" / "iwae-test-001.npy")
    assert estimates.shape == (3,) and abs(estimates.mean() - summary["log_px"]) < 1e-9
    details = np.load(vae_run / "eval" / "iwae-test-001.npz")
    assert {"mc_std_err", "ess", "iwae_k1", "iwae_k10", "iwae_k50"} <= set(details.files)
    assert (details["iwae_k1"] <= details["iwae_k50"] + 5).all() and (details["ess"] <= 50 + 1e-9).all()
    assert list(tmp_path.iterdir()) == []  # nothing left in the working folder (Hydra's goes to a temporary one)


def test_a_second_evaluation_gets_a_new_name_and_the_same_numbers(vae_run, shared_data, tmp_path):
    args = (f"run_dir={vae_run}", "likelihood=elbo", "likelihood.n_samples=20", *QUICK)
    first = vae_eval(*args, cwd=tmp_path, data=shared_data)
    assert first.returncode == 0, first.stderr
    before = _files(vae_run)
    second = vae_eval(*args, cwd=tmp_path, data=shared_data)
    assert second.returncode == 0, second.stderr
    after = _files(vae_run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    new = sorted(set(after) - set(before))
    assert [Path(n).stem for n in new] == ["elbo-test-002"] * 3
    a, b = (np.load(vae_run / "eval" / f"elbo-test-00{i}.npy") for i in (1, 2))
    assert np.array_equal(a, b)  # same seed, same numbers


def test_evaluate_returns_the_summary_it_writes(vae_run, shared_data):
    """The job in-process on a composed config, with the data root given on the command line."""
    cfg = compose_config([f"run_dir={vae_run}", "likelihood=elbo", "likelihood.n_samples=10", "n_points=4",
                          f"dataset.root={shared_data}", "split=train"], config_name="eval")
    summary = evaluate(cfg)
    assert summary["split"] == "train" and summary["points"] == 4 and summary["estimator"] == "elbo"
    assert json.loads(Path(summary["paths"][".json"]).read_text())["log_px"] == summary["log_px"]
    assert np.load(summary["paths"][".npy"]).shape == (4,)


def test_multirun_over_the_four_estimators_prints_the_exact_value_of_a_linear_gaussian_run(linear_run, shared_data, tmp_path):
    result = vae_eval(f"run_dir={linear_run}", "likelihood=iwae,ais,appendix_d,elbo", *QUICK, "--multirun",
                      cwd=tmp_path, data=shared_data)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # Nz = 2: App. D is in its range
    rows = {json.loads(p.read_text())["estimator"]: json.loads(p.read_text()) for p in (linear_run / "eval").glob("*.json")}
    assert set(rows) == {"iwae", "ais", "appendix_d", "elbo"}
    for name, s in rows.items():
        assert s["exact_log_px"] is not None and f"{s['exact_log_px']:.3f}" in result.stdout
        gap, mc = s["estimate_minus_exact"], s["mc_std_err"]
        if name == "elbo":
            assert gap < 0  # a lower bound
        else:
            assert abs(gap) < 0.5 and abs(gap) < 6 * mc + 0.05, (name, gap, mc)
    assert list(tmp_path.iterdir()) == []  # no multirun.yaml, no job folders


def test_appendix_d_warns_above_four_latent_dimensions(vae_run, shared_data, tmp_path):
    result = vae_eval(f"run_dir={vae_run}", "likelihood=appendix_d", "likelihood.n_samples=4", "likelihood.n_adapt=2",
                      "likelihood.thin=1", "n_points=1", "threads=1", cwd=tmp_path, data=shared_data)
    assert result.returncode == 0, result.stderr
    assert "vae-eval: warning: appendix_d is reliable only below 5 latent dimensions" in result.stderr and "Nz=20" in result.stderr


def test_a_checkpoint_of_format_1_evaluates_as_its_model_did(vae_run, shared_data, tmp_path):
    """Format 2 changed only the optimizer's state (two parameter groups): the model reads the same."""
    old, new = tmp_path / "format-1", tmp_path / "format-2"
    for run in (old, new):
        shutil.copytree(vae_run, run, ignore=shutil.ignore_patterns("eval"))
    state = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**state, "format_version": 1}, old / "checkpoints" / "last.pt")
    estimates = []
    for run in (old, new):
        result = vae_eval(f"run_dir={run}", "likelihood=elbo", "likelihood.n_samples=5", *QUICK, cwd=tmp_path, data=shared_data)
        assert result.returncode == 0, result.stderr
        (summary,) = (run / "eval").glob("*.json")
        estimates.append(json.loads(summary.read_text())["log_px"])
    assert estimates[0] == estimates[1]


def _incompatible(run: Path) -> str:
    folder = run.parent / "old-format"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 0, "model": {}}, folder / "checkpoints" / "last.pt")
    return str(folder)


def _foreign(run: Path) -> str:
    folder = run.parent / "foreign"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    return str(folder)


BAD_INPUTS = [
    (lambda run: [f"run_dir={run.parent}"], "no checkpoint at"),
    (lambda run: [f"run_dir={run.parent / 'missing'}"], "is not a folder"),
    (lambda run: [f"run_dir={_incompatible(run)}"], "has checkpoint format 0, this vae-cli reads format 1 or 2; use a matching vae-cli version"),
    (lambda run: [f"run_dir={_foreign(run)}"], "is not a readable vae-cli checkpoint"),
    (lambda run: [], "run_dir is required"),
    (lambda run: [f"run_dir={run}", "likelihood.k=0"], "likelihood.k=0 must be positive"),
    (lambda run: [f"run_dir={run}", "likelihood=ais", "likelihood.n_chains=0"], "likelihood.n_chains=0 must be positive"),
    (lambda run: [f"run_dir={run}", "split=validation"], "split=validation is not one of train, test, valid"),
    (lambda run: [f"run_dir={run}", "n_points=10001"], "n_points=10001 exceeds the 10000 points of the test split"),
    (lambda run: [f"run_dir={run}", "split=train", "n_points=1001"], "n_points=1001 exceeds the 1000 points of the train split"),
    (lambda run: [f"run_dir={run}", "likelihood=harmonic"], "unknown likelihood option 'harmonic'; choose one of: ais, appendix_d, elbo, iwae"),
    (lambda run: [f"run_dir={run}", "likelihood.chains=3"], "unknown config key 'likelihood.chains'"),
    (lambda run: [f"run_dir={run}", "likelihood=ais", "likelihood.schedule=cosine"], "likelihood.schedule=cosine is not one of sigmoid, linear"),
]


@pytest.mark.parametrize("make_args,needle", BAD_INPUTS, ids=[n.split(";")[0][:40] for _, n in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(vae_run, shared_data, tmp_path, make_args, needle):
    args = make_args(vae_run)
    before = _files(vae_run.parent)
    result = vae_eval(*args, cwd=tmp_path, data=shared_data)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-eval: error: ") and needle in lines[0], result.stderr
    assert _files(vae_run.parent) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["iwae", "ais", "appendix_d", "elbo"])
def test_every_likelihood_option_composes_and_validates(option):
    validate_eval(compose_config([f"likelihood={option}", "run_dir=somewhere"], config_name="eval"))


def test_the_default_is_iwae_with_5000_samples_on_the_test_set():
    cfg = compose_config(["run_dir=somewhere"], config_name="eval")
    assert cfg.likelihood.name == "iwae" and cfg.likelihood.k == 5000 and cfg.split == "test"
    with pytest.raises(UserError, match="likelihood.target_accept=1.5 must lie strictly between 0 and 1"):
        validate_eval(compose_config(["run_dir=x", "likelihood=ais", "likelihood.target_accept=1.5"], config_name="eval"))


def test_a_full_vb_run_is_evaluated_at_the_posterior_mean_or_over_draws_of_theta(shared_data, tmp_path):
    """`estimator=` spells `likelihood=`; theta_draws=K averages the estimate over K draws theta ~ q(theta)
    and says so; draws of theta widen the decoder, so their average ELBO lies below the mean's."""
    run = _train(tmp_path / "fvb", shared_data, "method=full_vb", "model.latent_dim=5", "posterior.init_log_sigma=-2")
    at_mean = vae_eval(f"run_dir={run}", "estimator=elbo", "n_points=50", "threads=1", cwd=tmp_path, data=shared_data)
    assert at_mean.returncode == 0, at_mean.stderr
    drawn = vae_eval(f"run_dir={run}", "estimator=elbo", "n_points=50", "threads=1", "theta_draws=4", cwd=tmp_path, data=shared_data)
    assert drawn.returncode == 0, drawn.stderr
    summaries = sorted((run / "eval").glob("elbo-test-*.json"))
    mean, draws = (json.loads(p.read_text()) for p in summaries)
    assert mean["theta"] == "mean" and draws["theta"] == "q_draws:4"
    assert draws["log_px"] < mean["log_px"]


def test_mcem_runs_refuse_estimators_that_sample_from_q(shared_data, tmp_path):
    run = _train(tmp_path / "mcem", shared_data, "method=mcem", "model.latent_dim=3", "model.hidden=[100]", "trainer.loglik_points=10")
    refused = vae_eval(f"run_dir={run}", "likelihood=iwae", *QUICK, cwd=tmp_path, data=shared_data)
    assert refused.returncode == 2 and "trained by MCEM, which learns no q(z|x)" in refused.stderr
    assert vae_eval(f"run_dir={run}", "likelihood=appendix_d", *QUICK, cwd=tmp_path, data=shared_data).returncode == 0
