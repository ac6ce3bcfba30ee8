"""`vae-eval` end to end through the installed script, on tiny runs trained on the real data:
what it writes, that it never overwrites, a sweep over the four estimators, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import yaml

from conftest import compose_config, run_console_script
from helpers import build_vae
from vae_cli.config import to_container
from vae_cli.errors import UserError
from vae_cli.jobs.evaluate import evaluate, validate_eval
from vae_cli.jobs.train import train
from vae_cli.runs import CHECKPOINT_FORMAT, MODEL_FORMATS
from vae_cli.saved import read_checkpoint, rebuild_model

SCRIPT = Path(sys.executable).parent / "vae-eval"
LIKELIHOODS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "likelihood").glob("*.yaml"))
TINY = ["trainer=debug", "dataset.n_train=1000", "trainer.max_samples=2e3", "evaluation.first=1e3",
        "trainer.progress=false", "trainer.figures=false", "speed.threads=1"]  # one thread: quick on a busy machine too
QUICK = ["n_points=3", "threads=1"]


def vae_eval(*args: str, cwd: Path, data: Path, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_CLI_DATA": str(data), **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return run_console_script("vae-eval", *args, env=env, cwd=cwd, timeout=timeout)


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
    curve = result.stdout.split("(IWAE from the first k samples of each point)\n", 1)[1].splitlines()[:3]  # the whole k-curve
    assert [line.split() for line in curve] == [[str(k), f"{summary['diagnostics'][f'iwae_k{k}']:.3f}"] for k in (1, 10, 50)]
    assert f"{summary['diagnostics']['iwae_k50']:.3f}" == f"{summary['log_px']:.3f}"
    bar = result.stderr.replace("\r", "\n")  # the progress bar: points, their rate, the running mean
    assert "iwae test" in bar and "3/3" in bar and " points/s" in bar and f"log p(x) {summary['log_px']:.3f}" in bar
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


@pytest.mark.parametrize("version", [v for v in MODEL_FORMATS if v != CHECKPOINT_FORMAT])
def test_a_checkpoint_of_an_earlier_format_evaluates_as_its_model_did(vae_run, shared_data, tmp_path, version):
    """Formats 1 and 2 differ from 3 in the optimizer's and sampler's state only: the model reads the same."""
    old, new = tmp_path / f"format-{version}", tmp_path / f"format-{CHECKPOINT_FORMAT}"
    for run in (old, new):
        shutil.copytree(vae_run, run, ignore=shutil.ignore_patterns("eval"))
    state = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**state, "format_version": version}, old / "checkpoints" / "last.pt")
    estimates = []
    for run in (old, new):
        result = vae_eval(f"run_dir={run}", "likelihood=elbo", "likelihood.n_samples=5", *QUICK, cwd=tmp_path, data=shared_data)
        assert result.returncode == 0, result.stderr
        (summary,) = (run / "eval").glob("*.json")
        estimates.append(json.loads(summary.read_text())["log_px"])
    assert estimates[0] == estimates[1]


def _previous_config(as_written: bool) -> dict:
    """The config.yaml / checkpoint config of an AEVB run of the previous version (checkpoint format 2):
    trainer.eval_*, trainer.n_models, posterior.*, logger.name, dataset.hidden, ...; no reading, no
    encoder_log_var_* (it ran eq. (12) as written), no warm-up. `as_written`: every key that version wrote,
    also those of the other options its union schemas held (method.n_leapfrog: null on AEVB, optimizer.betas
    on Adagrad); else only the keys of the options chosen."""
    config = {
        "dataset": {"name": "mnist", "root": None, "download": True, "binarize": "none", "binarize_seed": 0, "n_train": 1000,
                    "test_split": "test", "train_frames": 1500, "hidden": [500], "decoder": "bernoulli"},
        "model": {"name": "vae", "latent_dim": 3, "hidden": [50], "decoder": "bernoulli", "init_std": 0.1, "decoder_min_log_var": None},
        "method": {"name": "aevb"},
        "estimator": {"name": "sgvb_b", "n_samples": 1},
        "optimizer": {"name": "adagrad", "lr": 0.02, "eps": 1e-10},
        "prior": {"precision": 1.0, "scope": "weights"},
        "trainer": {"batch_size": 100, "max_samples": 2000.0, "eval_schedule": "log", "eval_per_decade": 4, "eval_first": 1000.0,
                    "eval_every": 1000000.0, "eval_estimator": "sgvb_b", "eval_n_samples": 1, "eval_train_points": 1000,
                    "eval_test_points": 1000, "eval_batch_size": 1000, "checkpoint_every": 10000.0, "resume": False,
                    "on_existing": "refuse", "progress": False, "progress_every": 10, "on_nan": "stop", "threads": None, "figures": False,
                    "track_loglik": False, "loglik_points": 100, "n_models": 1, "compile": False, "flush_denormals": True},
        "logger": {"name": "jsonl"}, "experiment_name": None, "scale_name": "full", "seed": 0, "device": "auto",
    }
    if as_written:
        config["method"].update(n_leapfrog=None, n_weight_updates=None, target_accept=None, init_step_size=None, jitter=None)
        config["optimizer"].update(momentum=0.0, betas=[0.9, 0.999])
        config["posterior"] = {"init_log_sigma": -5.0, "kl": "closed_form", "eval_draws": 0}
    return config


@pytest.mark.parametrize("as_written", [True, False], ids=["as-written", "chosen-options-only"])
def test_a_run_of_the_previous_version_still_loads_and_evaluates(shared_data, tmp_path, as_written):
    """A format-2 checkpoint with the previous version's config keys, built by hand from a small model:
    read_checkpoint + rebuild_model give back the same model (eq. (12) as written, not the new defaults'
    scaled head), and vae-eval evaluates it exactly as the same weights under a format-3 checkpoint."""
    model = build_vae(784, 3, [50], "bernoulli", 0.1, torch.Generator().manual_seed(5))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.02)
    old_config = _previous_config(as_written)
    old = tmp_path / "previous"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump(old_config, sort_keys=False))
    (old / "metrics.jsonl").write_text(json.dumps({"samples": 2000, "step": 20, "train_bound": -200.0, "test_bound": -201.0}) + "\n")
    torch.save({"format_version": 2, "config": old_config, "model": model.state_dict(), "method": {"optimizer": optimizer.state_dict()},
                "rng": {"data": torch.Generator().get_state(), "noise": torch.Generator().get_state()},
                "progress": {"step": 20, "samples": 2000, "epoch": 2.0, "position": 0, "wall_seconds": 1.0, "skipped": 0},
                "permutation": None}, old / "checkpoints" / "last.pt")

    cfg, state = read_checkpoint(old, torch.device("cpu"))
    assert cfg.speed.n_models == 1 and cfg.evaluation.train_points == 1000 and cfg.evaluation.first == 1000
    assert cfg.reading == "paper_text" and cfg.model.encoder_log_var_scale == 1.0 and cfg.model.encoder_log_var_init == "random"
    rebuilt = rebuild_model(cfg, state, 784, torch.device("cpu"))
    x = torch.rand(7, 784, generator=torch.Generator().manual_seed(1))
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q, q_rebuilt = model.encoder(x), rebuilt.encoder(x)
        assert torch.equal(q.mean, q_rebuilt.mean) and torch.equal(q.log_var, q_rebuilt.log_var)
        assert torch.equal(model.decoder(z).logits, rebuilt.decoder(z).logits)

    new = tmp_path / "current"
    (new / "checkpoints").mkdir(parents=True)
    torch.save({"format_version": CHECKPOINT_FORMAT, "config": to_container(cfg), "model": model.state_dict()}, new / "checkpoints" / "last.pt")
    estimates = []
    for run in (old, new):
        result = vae_eval(f"run_dir={run}", "likelihood=elbo", "likelihood.n_samples=5", *QUICK, cwd=tmp_path, data=shared_data)
        assert result.returncode == 0, result.stderr
        (summary,) = (run / "eval").glob("*.json")
        estimates.append(json.loads(summary.read_text()))
    assert estimates[0]["samples"] == 2000 and estimates[0]["latent_dim"] == 3 and np.isfinite(estimates[0]["log_px"])
    assert estimates[0]["log_px"] == estimates[1]["log_px"]


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
    (lambda run: [f"run_dir={_incompatible(run)}"], "has checkpoint format 0, this vae-cli reads format 1 or 2 or 3; use a matching vae-cli version"),
    (lambda run: [f"run_dir={_foreign(run)}"], "is not a readable vae-cli checkpoint"),
    (lambda run: [], "run_dir is required"),
    (lambda run: [f"run_dir={run}", "likelihood.k=0", "n_points=1"], "likelihood.k=0 must be positive"),
    (lambda run: [f"run_dir={run}", "likelihood=ais", "likelihood.n_chains=0", "n_points=1"], "likelihood.n_chains=0 must be positive"),
    (lambda run: [f"run_dir={run}", "split=validation"], "split=validation is not one of train, test, valid"),
    (lambda run: [f"run_dir={run}", "n_points=10001"], "n_points=10001 exceeds the 10000 points of the test split"),
    (lambda run: [f"run_dir={run}", "split=train", "n_points=1001"], "n_points=1001 exceeds the 1000 points of the train split"),
    (lambda run: [f"run_dir={run}", "likelihood=harmonic"], f"unknown likelihood option 'harmonic'; choose one of: {', '.join(LIKELIHOODS)}"),
    (lambda run: [f"run_dir={run}", "likelihood.chains=3"], "unknown config key 'likelihood.chains'"),
    (lambda run: [f"run_dir={run}", "likelihood=ais", "likelihood.schedule=cosine", "n_points=1"],
     ("likelihood.schedule", "cosine", "sigmoid, linear")),
    (lambda run: [f"run_dir={run}", "likelihood=appendix_d", "likelihood.density=kde", "n_points=1",
                  "likelihood.n_samples=4", "likelihood.n_adapt=2"], ("likelihood.density", "kde", "gaussian, diagonal")),
    (lambda run: [f"run_dir={run}", "likelihood=appendix_d", "likelihood.n_samples=1"], "likelihood.n_samples must be at least 2"),
    (lambda run: [f"run_dir={run}", "theta_draws=2"], "theta_draws=2 applies to method=full_vb runs"),
    (lambda run: [f"run_dir={run}", "member=1"], "member=1 picks a model of a run trained with speed.n_models>1"),
]


# n_points=1 where a missing check would start an estimate: the test then fails in seconds, not after a full one
@pytest.mark.parametrize("make_args,needle", BAD_INPUTS, ids=[" ".join(n) if isinstance(n, tuple) else n.split(";")[0][:40] for _, n in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(vae_run, shared_data, tmp_path, make_args, needle):
    """`needle`: words the line holds, or a tuple of fragments it holds each (the key, the value, the choices)."""
    args = make_args(vae_run)
    before = _files(vae_run.parent)
    result = vae_eval(*args, cwd=tmp_path, data=shared_data, timeout=120)  # refused before any estimate
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-eval: error: "), result.stderr
    assert all(fragment in lines[0] for fragment in (needle if isinstance(needle, tuple) else (needle,))), lines[0]
    assert _files(vae_run.parent) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", LIKELIHOODS)
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
    run = _train(tmp_path / "fvb", shared_data, "method=full_vb", "model.latent_dim=5", "method.init_log_sigma=-2")
    at_mean = vae_eval(f"run_dir={run}", "estimator=elbo", "n_points=50", "threads=1", cwd=tmp_path, data=shared_data)
    assert at_mean.returncode == 0, at_mean.stderr
    drawn = vae_eval(f"run_dir={run}", "estimator=elbo", "n_points=50", "threads=1", "theta_draws=4", cwd=tmp_path, data=shared_data)
    assert drawn.returncode == 0, drawn.stderr
    summaries = sorted((run / "eval").glob("elbo-test-*.json"))
    mean, draws = (json.loads(p.read_text()) for p in summaries)
    assert mean["theta"] == "mean" and draws["theta"] == "q_draws:4"
    assert draws["log_px"] < mean["log_px"]


def test_mcem_runs_refuse_estimators_that_sample_from_q(shared_data, tmp_path):
    run = _train(tmp_path / "mcem", shared_data, "method=mcem", "model.latent_dim=3", "model.hidden=[100]", "evaluation.loglik_points=10")
    refused = vae_eval(f"run_dir={run}", "likelihood=iwae", *QUICK, cwd=tmp_path, data=shared_data)
    assert refused.returncode == 2 and "trained by mcem, which learns no q(z|x)" in refused.stderr
    assert vae_eval(f"run_dir={run}", "likelihood=appendix_d", *QUICK, cwd=tmp_path, data=shared_data).returncode == 0


def _copy(run: Path, folder: Path) -> Path:
    """A copy of a run without its eval/ folder: tests that write results do not disturb the others' names."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("eval"))
    return folder


def test_null_threads_are_one_for_hmc_estimators_and_the_usable_cores_otherwise(vae_run, shared_data, tmp_path):
    run = _copy(vae_run, tmp_path / "run")
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    torch_default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                                       text=True, env=env, check=True).stdout)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for args in (["likelihood=ais", "likelihood.n_steps=5", "likelihood.n_chains=2"], ["likelihood=elbo", "likelihood.n_samples=5"]):
        result = vae_eval(f"run_dir={run}", *args, "n_points=2", cwd=tmp_path, data=shared_data)
        assert result.returncode == 0, result.stderr
    threads = {json.loads(p.read_text())["estimator"]: json.loads(p.read_text())["threads"] for p in (run / "eval").glob("*.json")}
    assert threads == {"ais": 1, "elbo": min(torch_default, cores)}


def test_a_leading_tilde_in_an_override_is_the_home_folder(vae_run, shared_data, tmp_path):
    _copy(vae_run, tmp_path / "run")
    (tmp_path / "data").symlink_to(shared_data)
    result = vae_eval("run_dir=~/run", "dataset.root=~/data", "likelihood=elbo", "likelihood.n_samples=2", *QUICK, cwd=tmp_path,
                      data=tmp_path / "nowhere", env_extra={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(next((tmp_path / "run" / "eval").glob("elbo-test-*.json")).read_text())["run_dir"] == str(tmp_path / "run")


def test_ctrl_c_during_an_estimate_says_nothing_was_written(vae_run, shared_data, tmp_path):
    """The default estimate (IWAE, k = 5000, the 10,000 test points) takes minutes: interrupted once its bar
    shows a running mean, it stops at once, in one line, and leaves the run as it was."""
    run = _copy(vae_run, tmp_path / "run")
    before = _files(run)
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([str(SCRIPT), f"run_dir={run}", "batch_size=10", "threads=1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(b) for b in iter(lambda: proc.stderr.read1(4096), b"")], daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while b"log p(x) -" not in err and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, err.decode()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = proc.stdout.read()
    text = err.decode()
    assert proc.returncode == 130, text
    assert re.split(r"[\r\n]+", text.strip())[-1] == "vae-eval: interrupted; nothing was written"
    assert "Traceback" not in text and out == b""
    assert _files(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_folder_given_without_run_dir_is_one_line_naming_the_fix(vae_run, shared_data, tmp_path):
    done = vae_eval(str(vae_run), cwd=tmp_path, data=shared_data)
    assert done.returncode == 2 and done.stderr.strip() == f"vae-eval: error: '{vae_run}' is not key=value; to evaluate that run write vae-eval run_dir={vae_run}"


def test_a_sweep_jobs_folder_named_with_equals_and_commas_is_one_run_dir(vae_run, shared_data, tmp_path):
    """A preset's job folder is named like `method=aevb,model.latent_dim=20`: vae-eval takes it as one path."""
    import shutil

    job = tmp_path / "method=aevb,model.latent_dim=20"
    shutil.copytree(vae_run, job)
    shutil.rmtree(job / "eval", ignore_errors=True)  # the shared run may already hold other tests' evaluations
    done = vae_eval(f"run_dir={job}", "likelihood=elbo", "likelihood.n_samples=5", "n_points=10", "threads=1", cwd=tmp_path, data=shared_data)
    assert done.returncode == 0, done.stderr
    assert len(list((job / "eval").glob("elbo-test-*.json"))) == 1
