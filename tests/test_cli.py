"""The installed console script end to end: a run, a sweep, and every bad input in one line."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "vae-train"
TINY = ["trainer=debug", "dataset.n_train=1000", "trainer.max_samples=2e3", "trainer.eval_first=1e3"]


def vae_train(*args: str, env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package with the README's command"
    env = {**os.environ, **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_data):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = vae_train(*TINY, f"hydra.run.dir={run}", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    assert f"metrics:    {run / 'metrics.jsonl'}" in result.stdout
    assert "checkpoint:" in result.stdout and "figures:" in result.stdout
    return run


def test_a_run_writes_config_metrics_checkpoint_and_figures(finished_run):
    names = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints/last.pt", "figures/samples.png", "figures/reconstructions.png"} <= names
    assert "train.log" not in names  # the run folder holds vae-cli's files only


BAD_INPUTS = [
    (["dataset=imagenet"], "unknown dataset option 'imagenet'; choose one of: frey, mnist"),
    (["optimizer=rmsprop"], "unknown optimizer option 'rmsprop'"),
    (["trainer.speed=3"], "unknown config key 'trainer.speed'"),
    (["+colour=red"], "unknown config key 'colour'"),
    (["trainer.batch_size=many"], "trainer.batch_size: Value 'many'"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 must be positive"),
    (["optimizer.lr=0"], "optimizer.lr=0.0 must be positive"),
    (["trainer.max_samples=-1e6"], "trainer.max_samples=-1000000.0 must be positive"),
    (["dataset.n_train=70000"], "dataset.n_train=70000 exceeds the 50000 training images"),
    (["dataset.root=/nonexistent/folder", "dataset.download=false"], "mnist not found in /nonexistent/folder"),
    (["device=cuda"], "device=cuda but no CUDA GPU"),
    ([], "already holds a run; continue it with trainer.resume=true"),
    (["trainer.resume=true", "seed=9"], "holds a run with a different config (seed: 0 there, 9 requested)"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[" ".join(a) or "rerun" for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_folder_alone(finished_run, shared_data, args, needle):
    if args == ["device=cuda"] and __import__("torch").cuda.is_available():
        pytest.skip("a CUDA GPU is present, so device=cuda is valid here")
    before = _hashes(finished_run)
    result = vae_train(*TINY, *args, f"hydra.run.dir={finished_run}", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-train: error: "), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _hashes(finished_run) == before


def test_debug_flag_shows_the_traceback(finished_run, shared_data):
    result = vae_train(*TINY, "--debug", f"hydra.run.dir={finished_run}", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode != 0 and "Traceback" in result.stderr and "already holds a run" in result.stderr


def test_multirun_sweeps_one_folder_per_job(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    result = vae_train("--multirun", "model.latent_dim=2,3", *TINY, "trainer.figures=false", f"hydra.sweep.dir={sweep}",
                       env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    assert (sweep / "multirun.yaml").is_file()
    for job, nz in (("0", 2), ("1", 3)):
        assert (sweep / job / "metrics.jsonl").is_file()
        assert f"latent_dim: {nz}" in (sweep / job / "config.yaml").read_text()
