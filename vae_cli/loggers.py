"""Where a run's evaluations go besides metrics.jsonl (always written, `runs.MetricsLog`): TensorBoard
scalars (`logger=tensorboard`) and MLflow tracking (`logger=mlflow`); `logger=[tensorboard,mlflow]` both.
Each chosen logger's package is checked before anything of the run is written.

MLflow: each vae-train run is an MLflow run of the experiment `logger.mlflow_experiment`, with its
flattened resolved config as params and its curves (bounds, log-likelihood estimates, the running
minibatch bound) as metrics against training samples evaluated, the x-axis of the paper; at the end
its figures, config, metrics and final checkpoint as artifacts. The jobs of a sweep are children of
one parent run per sweep folder. A resumed run continues its own MLflow run (its id is kept in the
run folder's `mlflow.json`) and logs only the evaluations the store does not hold yet. The default
store is `sqlite:///mlflow.db` in the folder vae-train is started from, beside `outputs/`:
`mlflow ui --backend-store-uri sqlite:///mlflow.db` opens it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import UserError, install_extra
from .runs import atomic_write_bytes, flatten

CURVES = ("train_bound", "test_bound", "train_loglik", "test_loglik")
TRACKED = (*CURVES, "train_bound_running", "skipped_steps")  # what MLflow gets of each metrics row
MLFLOW_FILE = "mlflow.json"


def require(cfg) -> None:
    """Fail in one line, before a run folder is touched, when a chosen logger's package is missing."""
    for name, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow")):
        if cfg.logger[name]:
            try:
                __import__(module)
            except ImportError:
                raise UserError(f"logger={name} needs the {module} package: {install_extra(extra)}") from None


class TensorBoard:
    """Scalars bound/train, bound/test, loglik/... against training samples; a stack's per model."""

    def __init__(self, run_dir: Path, samples: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=samples or None)

    def log(self, rows: list[dict]) -> None:
        for row in rows:
            for key in CURVES:
                if row.get(key) is not None:
                    split, kind = key.split("_")
                    member = "" if row.get("model") is None else f"/model_{row['model']}"
                    self.writer.add_scalar(f"{kind}/{split}{member}", row[key], row["samples"])

    def close(self, artifacts: list[tuple[Path, str | None]]) -> None:
        self.writer.close()


def tracking_uri(cfg) -> str:
    return cfg.logger.mlflow_uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


class MLflow:
    """One MLflow run per vae-train run (see the module's docstring)."""

    def __init__(self, cfg, config: dict, run_dir: Path, sweep_dir: Path | None):
        try:
            self._open(cfg, config, run_dir, sweep_dir)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreachable or broken store is the user's setting
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"MLflow's store {tracking_uri(cfg)} cannot be used ({type(e).__name__}: {reason}); "
                            "set logger.mlflow_uri= to a reachable one, or drop logger=mlflow") from None

    def _open(self, cfg, config: dict, run_dir: Path, sweep_dir: Path | None) -> None:
        from mlflow import MlflowClient

        saved = json.loads((run_dir / MLFLOW_FILE).read_text()) if (run_dir / MLFLOW_FILE).is_file() else None
        self.client = MlflowClient(saved["tracking_uri"] if saved else tracking_uri(cfg))
        if saved:  # a resumed run: continue its MLflow run
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            history = [m.step for key in TRACKED for m in self.client.get_metric_history(self.run_id, key)]
            self.logged = max(history, default=-1)
            return
        experiment = self._experiment(cfg.logger.mlflow_experiment)
        parent = self._parent(experiment, sweep_dir) if sweep_dir is not None else None
        tags = {"mlflow.parentRunId": parent} if parent else {}
        self.run_id = self.client.create_run(experiment, run_name=run_dir.name, tags={**tags, "run_dir": str(run_dir)}).info.run_id
        atomic_write_bytes(run_dir / MLFLOW_FILE, json.dumps({"tracking_uri": self.client.tracking_uri, "run_id": self.run_id}).encode())
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # the store takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.logged = -1

    def _experiment(self, name: str) -> str:
        """The experiment's id; a new one in a local SQLite store keeps its artifacts beside the store."""
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        uri = self.client.tracking_uri
        local = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") else None
        return self.client.create_experiment(name, artifact_location=local.as_uri() if local else None)

    def _parent(self, experiment: str, sweep_dir: Path) -> str:
        """The parent run of a sweep folder: created by its first job, named in the folder's mlflow.json."""
        path = sweep_dir / MLFLOW_FILE
        for _ in range(2):
            if path.is_file():
                return json.loads(path.read_text())["run_id"]
            run_id = self.client.create_run(experiment, run_name=sweep_dir.name, tags={"sweep_dir": str(sweep_dir)}).info.run_id
            try:
                atomic_write_bytes(path, json.dumps({"tracking_uri": self.client.tracking_uri, "run_id": run_id}).encode(), overwrite=False)
                return run_id
            except FileExistsError:  # another job of the sweep made it first
                self.client.delete_run(run_id)
        raise UserError(f"{path} could not be read; remove it and relaunch the sweep")

    def log(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key + ("" if row.get("model") is None else f"/model_{row['model']}"), float(row[key]), now, row["samples"])
                   for row in rows if row["samples"] > self.logged for key in TRACKED if row.get(key) is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, artifacts: list[tuple[Path, str | None]]) -> None:
        """The run's files (path, folder in the run's artifacts), then the run marked finished."""
        for path, folder in artifacts:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
        self.client.set_terminated(self.run_id, "FINISHED")


def open_loggers(cfg, config: dict, run_dir: Path, samples: int, sweep_dir: Path | None) -> list:
    sinks = [TensorBoard(run_dir, samples)] if cfg.logger.tensorboard else []
    return sinks + ([MLflow(cfg, config, run_dir, sweep_dir)] if cfg.logger.mlflow else [])
