"""Run folders: self-describing, append-only, written atomically.

A run folder holds `config.yaml` (the resolved config), `metrics.jsonl` (one JSON object per
evaluation), `checkpoints/last.pt` (everything needed to continue exactly) and `figures/`.
Every file is written to a temporary name, flushed to disk and renamed, so a crash or a kill at any
moment leaves the previous version whole (TensorBoard's event files in `tb/` are the exception:
append-only by design, and a resumed run purges the events past its checkpoint). A folder that
already holds a run is never written into unless the run is being resumed.
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

_UMASK = os.umask(0)
os.umask(_UMASK)

CHECKPOINT_FORMAT = 2  # 2: optimizers hold the weight prior's parameters as their first group
MODEL_FORMATS = (1, 2)  # formats whose model weights this version reads (evaluation); only CHECKPOINT_FORMAT resumes
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"
WALL_CLOCK_FIELDS = ("wall_seconds", "samples_per_second")  # the only fields that differ between reruns
# Keys a resumed run may change without changing what it computes.
RESUMABLE_CHANGES = {
    "trainer.resume", "trainer.max_samples", "trainer.progress", "trainer.progress_every",
    "trainer.threads", "trainer.compile", "trainer.flush_denormals", "trainer.checkpoint_every", "trainer.figures", "dataset.root",
    "dataset.download", "device", "logger.name", "trainer.on_nan", "trainer.on_existing",
}
# Keys added after runs were written: a saved config without one ran with this value.
ADDED_KEYS = {"trainer.n_models": 1, "trainer.compile": False, "trainer.flush_denormals": False}
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
    a, b = {**ADDED_KEYS, **flatten(saved)}, {**ADDED_KEYS, **flatten(requested)}
    return sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))


def start_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """Claim `run_dir` for a new run (write its config.yaml), or check it holds a compatible run
    when resuming (the caller saves the config once the checkpoint has loaded).

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
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"trainer.resume=true but {run_dir} holds no run (no {CONFIG_FILE}, no {CHECKPOINT_FILE}); point hydra.run.dir= at a run folder")
        if not (run_dir / CHECKPOINT_FILE).is_file() and (run_dir / METRICS_FILE).is_file():
            raise UserError(f"{run_dir / CHECKPOINT_FILE} is missing, so the run in {run_dir} cannot continue; restore it or start a new hydra.run.dir=")
        saved = read_config(run_dir)
        diff = config_differences(saved, config)
        if diff:
            key = diff[0]
            raise UserError(
                f"{run_dir} holds a run with a different config ({key}: {flatten(saved).get(key)!r} there, "
                f"{flatten(config).get(key)!r} requested); resume it with its own settings (vae-train resume_from={run_dir}) or start a new hydra.run.dir="
            )
        for leftover in run_dir.rglob(TEMPORARY_GLOB):
            leftover.unlink()
        return
    if holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run; continue it with trainer.resume=true or choose a new hydra.run.dir=")
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


def resume_config(run_dir: Path, overrides: list[str], schema: type) -> DictConfig:
    """What `vae-train resume_from=RUN_DIR [key=value ...]` runs: the run's own config.yaml, typed
    by `schema`, with trainer.resume=true and overrides of RESUMABLE_CHANGES keys only."""
    saved = read_config(run_dir)
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key not in RESUMABLE_CHANGES:
            allowed = ", ".join(sorted(k for k in RESUMABLE_CHANGES if k != "trainer.resume"))
            raise UserError(f"'{override}' cannot change when resuming (resume_from= runs {run_dir / CONFIG_FILE}); "
                            f"only {allowed} may; start a new run to change anything else")
    return OmegaConf.merge(OmegaConf.structured(schema), saved, OmegaConf.from_dotlist(overrides), {"trainer": {"resume": True}})


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
