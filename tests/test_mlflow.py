"""`logger=mlflow`: runs, sweeps and resumed runs read back through MLflow's own client.

Each test keeps its tracking store (an SQLite file) in its own folder. A short run must give one MLflow
run with the flattened config as params, the bounds as metrics against training samples, and its files
as artifacts; a two-job sweep a parent run with the jobs as children; a run killed between two
evaluations and resumed one MLflow run whose metric history has each evaluation once. Without the
mlflow package the run is refused in one line naming the extra, before anything is written.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config
from vae_cli.errors import UserError
from vae_cli.jobs import train as train_module
from vae_cli.jobs.train import train
from vae_cli.runs import METRICS_FILE, read_metrics, resume_config

mlflow = pytest.importorskip("mlflow", reason='logger=mlflow needs the mlflow package: pip install -e ".[mlflow]"')
from mlflow import MlflowClient  # noqa: E402

SHORT = ["dataset=frey", "model.latent_dim=3", "model.hidden=[32]", "trainer.max_samples=3e3", "evaluation.schedule=linear",
         "evaluation.every=1e3", "trainer.checkpoint_every=1e3", "trainer.progress=false", "speed.threads=1", "logger=mlflow"]


def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def runs_of(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vae-cli")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_run_is_one_mlflow_run_with_params_metrics_against_samples_and_artifacts(tmp_path, shared_data):
    uri = store(tmp_path)
    cfg = compose_config([f"dataset.root={shared_data}", *SHORT, f"logger.mlflow_uri={uri}"])
    train(cfg, run_dir=tmp_path / "run")
    (run,) = runs_of(uri)
    client = MlflowClient(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "3" and run.data.params["dataset.name"] == "frey"
    assert run.data.params["optimizer.warmup_steps"] == "10" and run.data.params["reading"] == "author_code"
    rows = read_metrics(tmp_path / "run")
    history = client.get_metric_history(run.info.run_id, "test_bound")
    assert [(m.step, m.value) for m in history] == [(r["samples"], r["test_bound"]) for r in rows]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_bound_running")] == [r["samples"] for r in rows[1:]]
    files = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for folder in ("figures", "checkpoints") for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"config.yaml", METRICS_FILE, "checkpoints/last.pt", "figures/samples.png", "figures/reconstructions.png"} <= files
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["run_id"] == run.info.run_id


def test_a_sweep_is_a_parent_run_with_its_jobs_as_children(tmp_path, shared_data):
    uri = store(tmp_path)
    script = Path(sys.executable).parent / "vae-train"
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    done = subprocess.run([str(script), *SHORT, "trainer.max_samples=1e3", f"logger.mlflow_uri={uri}", "seed=0,1",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", "--multirun"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = runs_of(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_killed_and_resumed_run_stays_one_mlflow_run_with_each_evaluation_once(tmp_path, shared_data, monkeypatch):
    uri = store(tmp_path)
    cfg = compose_config([f"dataset.root={shared_data}", *SHORT, f"logger.mlflow_uri={uri}"])
    rows = train_module.evaluation_rows

    def killed_after_2000(cfg, learner, data, samples, step):
        if samples == 3000:  # the evaluation at 2000 is logged, the checkpoint at 2000 written; killed before 3000
            raise SimulatedKill
        return rows(cfg, learner, data, samples, step)

    monkeypatch.setattr(train_module, "evaluation_rows", killed_after_2000)
    with pytest.raises(SimulatedKill):
        train(cfg, run_dir=tmp_path / "run")
    (first,) = runs_of(uri)
    assert first.info.status == "RUNNING"
    monkeypatch.setattr(train_module, "evaluation_rows", rows)
    train(resume_config(tmp_path / "run", []), run_dir=tmp_path / "run")
    (run,) = runs_of(uri)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "test_bound")
    assert [m.step for m in history] == [0, 1000, 2000, 3000]
    assert [m.value for m in history] == [r["test_bound"] for r in read_metrics(tmp_path / "run")]


def test_without_the_mlflow_package_the_run_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(UserError, match=r'^logger=mlflow needs the mlflow package: pip install -e "\.\[mlflow\]" in the vae-cli checkout$'):
        train(compose_config(["logger=mlflow"]), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
