"""Run folders: self-describing, append-only, written atomically.

A run folder holds `config.yaml` (the resolved config), `metrics.jsonl` (one JSON object per
evaluation), `checkpoints/last.pt` (everything needed to continue exactly) and `figures/`.
Every file is written to a temporary name, flushed to disk and renamed, so a crash or a kill at any
moment leaves the previous version whole (TensorBoard's event files in `tb/` are the exception:
append-only by design, and a resumed run purges the events past its checkpoint). A folder that
already holds a run is never written into unless the run is being resumed, and one vae-train at a
time trains in a folder (`RunLock`).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .locks import RunLock

_UMASK = os.umask(0)
os.umask(_UMASK)

CHECKPOINT_FORMAT = 3  # 3: methods' optimizers and schedules by name, the sampler's state; 2: before
MODEL_FORMATS = (1, 2, 3)  # formats whose model weights this version reads (evaluation); only CHECKPOINT_FORMAT resumes
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"
WALL_CLOCK_FIELDS = ("wall_seconds", "samples_per_second")  # the only fields that differ between reruns
# Keys a resumed run may change without changing what it computes.
RESUMABLE_CHANGES = {
    "trainer.max_samples", "trainer.progress", "trainer.progress_every", "trainer.checkpoint_every", "trainer.figures",
    "trainer.on_nan", "trainer.on_existing", "speed.threads", "speed.compile", "speed.flush_denormals", "dataset.root",
    "dataset.download", "device", "logger.tensorboard", "logger.mlflow", "logger.mlflow_uri", "logger.mlflow_experiment",
}
# Configs written by earlier versions: key renames, and keys they lacked with the value they ran with.
RENAMED_KEYS = {
    "trainer.n_models": "speed.n_models", "trainer.compile": "speed.compile", "trainer.threads": "speed.threads",
    "trainer.flush_denormals": "speed.flush_denormals", "trainer.eval_schedule": "evaluation.schedule",
    "trainer.eval_per_decade": "evaluation.per_decade", "trainer.eval_first": "evaluation.first",
    "trainer.eval_every": "evaluation.every", "trainer.eval_estimator": "evaluation.estimator",
    "trainer.eval_n_samples": "evaluation.n_samples", "trainer.eval_train_points": "evaluation.train_points",
    "trainer.eval_test_points": "evaluation.test_points", "trainer.eval_batch_size": "evaluation.batch_size",
    "trainer.track_loglik": "evaluation.loglik", "trainer.loglik_points": "evaluation.loglik_points",
    "posterior.init_log_sigma": "method.init_log_sigma", "posterior.kl": "method.kl", "posterior.eval_draws": "method.eval_draws",
}
ADDED_KEYS = {  # what runs written before these keys existed did: the paper's text read literally
    "speed.n_models": 1, "speed.compile": False, "speed.flush_denormals": False, "reading": "paper_text",
    "model.encoder_log_var_scale": 1.0, "model.encoder_log_var_init": "random", "model.decoder_variance": "data_dependent",
    "model.decoder_uniform_mixture": False, "optimizer.warmup_steps": 0, "trainer.minibatches": "epochs",
}


def upgrade_config(saved: dict) -> dict:
    """A config.yaml of any version as this version names it (flat keys in, nested dict out)."""
    flat = flatten(saved)
    flat = {RENAMED_KEYS.get(k, k): v for k, v in flat.items()}
    if flat.get("dataset.name") == "frey":
        flat.setdefault("dataset.split", "sequential")
    if flat.get("optimizer.name") == "adagrad":
        flat.setdefault("optimizer.initial_accumulator_value", 0.0)
    if flat.get("trainer.on_existing") == "continue":
        flat["trainer.on_existing"] = "resume"
    for key, value in ADDED_KEYS.items():
        flat.setdefault(key, value)
    for key in ("trainer.resume", "logger.name", "dataset.hidden", "dataset.decoder"):
        flat.pop(key, None)
    if flat.get("dataset.name") == "mnist":
        flat.pop("dataset.train_frames", None)
    else:
        for key in ("dataset.binarize", "dataset.binarize_seed", "dataset.test_split"):
            flat.pop(key, None)
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
TEMPORARY_GLOB = ".*.tmp"  # what atomic_write_bytes writes before its rename


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename over `path`.

    A failure (disk full, I/O error) removes the temporary file, leaves `path` as it was, and is
    reported as a one-line UserError naming the file. With `overwrite=False` the file is hard-linked
    into place instead, which raises FileExistsError when `path` exists, so an earlier result is
    never replaced (not even by a concurrent writer).
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        _fsync_folder(path.parent)  # make the rename itself durable
    except FileExistsError:
        raise
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e}); the previous version is kept; "
                        "free some disk space or choose another hydra.run.dir=") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: dict, requested: dict) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring RESUMABLE_CHANGES."""
    a, b = flatten(upgrade_config(saved)), flatten(upgrade_config(requested))
    return sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))


def start_run_dir(run_dir: Path, config: dict, resume: bool, lock: RunLock | None = None) -> None:
    """Claim `run_dir` for a new run (write its config.yaml), or check it holds a compatible run when
    resuming (the caller saves the config once the checkpoint has loaded). `lock` is taken as soon as
    the folder exists, before it is looked into.

    A new run writes config.yaml, then a checkpoint at sample 0, then metrics; a run killed between
    the first two resumes from sample 0 (nothing else was written). Temporary files of writes cut
    short by a kill are removed.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}.tmp"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run folder {run_dir} ({e.strerror}); choose another with hydra.run.dir=") from None
    if lock is not None:
        lock.acquire()
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file() and (run_dir / METRICS_FILE).is_file():
            raise UserError(f"{run_dir / CHECKPOINT_FILE} is missing, so the run in {run_dir} cannot continue; restore it or start a new hydra.run.dir=")
        saved = read_config(run_dir)
        diff = config_differences(saved, config)
        if diff:
            key = diff[0]
            raise UserError(
                f"{run_dir} holds a run with a different config ({key}: {flatten(upgrade_config(saved)).get(key)!r} there, "
                f"{flatten(upgrade_config(config)).get(key)!r} requested); resume it with its own settings (vae-train resume_from={run_dir}) "
                "or start a new hydra.run.dir=")
        for leftover in run_dir.rglob(TEMPORARY_GLOB):
            leftover.unlink()
        return
    if holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run; continue that run with vae-train resume_from={run_dir}, "
                        "or start this one in a new hydra.run.dir=")
    save_config(run_dir, config)


def save_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def read_config(run_dir: Path) -> dict:
    """The resolved config a run folder was started with (its config.yaml)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no run ({CONFIG_FILE} is missing); point at a run folder such as outputs/<date>/<time>")
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not readable YAML ({type(e).__name__}); restore it from a copy or start a new run") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} does not hold a vae-cli config; restore it from a copy or start a new run")
    return saved


def resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """What `vae-train resume_from=RUN_DIR [key=value ...]` runs: the run's own config.yaml, typed,
    with trainer.on_existing=resume and overrides of RESUMABLE_CHANGES keys only."""
    from .config import typed_config

    saved = upgrade_config(read_config(run_dir))
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key not in RESUMABLE_CHANGES:
            allowed = ", ".join(sorted(RESUMABLE_CHANGES))
            raise UserError(f"'{override}' cannot change when resuming (resume_from= runs {run_dir / CONFIG_FILE}); "
                            f"only {allowed} may; start a new run to change anything else")
    cfg = typed_config(saved)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides), {"trainer": {"on_existing": "resume"}})


class MetricsLog:
    """metrics.jsonl: rows appended in memory and the whole file rewritten atomically each time."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE
        self.rows: list[dict] = []

    def resume(self, samples: int) -> None:
        """Keep the rows up to the checkpoint's sample count: none duplicated, none missing."""
        if self.path.is_file():
            self.rows = [r for r in read_metrics(self.path.parent) if r["samples"] <= samples]

    def append(self, row: dict) -> None:
        self.extend([row])

    def extend(self, rows: list[dict]) -> None:
        """Append `rows` in one atomic write (a stack's K rows of one evaluation are never split)."""
        self.rows.extend(rows)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl; a missing or foreign file is a one-line UserError."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {METRICS_FILE}; point at a run folder such as outputs/<date>/<time>")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a vae-cli metrics file ({type(e).__name__}); restore it or start a new run") from None
    if not all(isinstance(r, dict) and isinstance(r.get("samples"), int) for r in rows):
        raise UserError(f"{path} is not a vae-cli metrics file (a row without its sample count); restore it or start a new run")
    return rows


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """checkpoints/last.pt, written atomically; `state` holds only tensors and plain containers."""
    buffer = io.BytesIO()
    torch.save({"format_version": CHECKPOINT_FORMAT, **state}, buffer)
    path = run_dir / CHECKPOINT_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", formats: tuple[int, ...] = (CHECKPOINT_FORMAT,)) -> dict:
    """Load with weights_only=True (no code runs); refuse formats outside `formats` with one line
    (training resumes CHECKPOINT_FORMAT only; evaluation reads every one of MODEL_FORMATS)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; point at a run folder that holds checkpoints/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UserError(f"{path} is not a readable vae-cli checkpoint ({type(e).__name__}); restore it or train again") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version not in formats:
        fix = ("its model can still be evaluated (vae-eval, vae-report); to train further start a new run"
               if version in MODEL_FORMATS else "use a matching vae-cli version")
        raise UserError(f"{path} has checkpoint format {version!r}, this vae-cli reads format {' or '.join(map(str, formats))}; {fix}")
    return state
