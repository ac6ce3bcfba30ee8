"""The installed console script end to end: a run, a sweep, and every bad input in one line."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_cli.data import safe_unpickle
from vae_cli.runs import CHECKPOINT_FORMAT

SCRIPT = Path(sys.executable).parent / "vae-train"
TINY = ["trainer=debug", "dataset=frey", "trainer.max_samples=2e3", "trainer.eval_first=1e3"]  # Frey Face: quick to load


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


# Each bad input: a preparation of the files it needs, the arguments ({run}: the run folder whose
# files must stay unchanged, {tmp}: a scratch folder), and the words its one line must contain.

def _copy_run(tmp: Path, run: Path, change, file: str = "checkpoints/last.pt") -> Path:
    """A copy of the finished run whose `file` (by default its checkpoint) `change` spoils."""
    copy = tmp / "run"
    shutil.copytree(run, copy)
    change(copy / file)
    return copy


def _edit_checkpoint(edit):
    def change(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)
    return change


def _frey_pickle(tmp: Path, payload) -> None:
    (tmp / "data").mkdir()
    with open(tmp / "data" / "freyfaces.pkl", "wb") as f:
        pickle.dump(payload, f, protocol=2)


class _RunsAShellCommand:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran code",))


def _changed_frey_pixel(data: Path):
    with open(data / "freyfaces.pkl", "rb") as f:
        frames = safe_unpickle(f)[0].copy()
    frames[0, 0] ^= 1
    return [frames]


def _truncated(data: Path, name: str, tmp: Path) -> None:
    (tmp / "data").mkdir()
    raw = (data / name).read_bytes()
    (tmp / "data" / name).write_bytes(raw[: len(raw) // 2])


def _layer_shapes(state):
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3, 3)


PREPARE = {
    "run": lambda tmp, run, data: run,
    "truncated checkpoint": lambda tmp, run, data: _copy_run(tmp, run, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "foreign checkpoint": lambda tmp, run, data: _copy_run(tmp, run, lambda p: p.write_bytes(b"not a checkpoint")),
    "missing checkpoint": lambda tmp, run, data: _copy_run(tmp, run, lambda p: p.unlink()),
    "checkpoint format 99": lambda tmp, run, data: _copy_run(tmp, run, _edit_checkpoint(lambda s: s.update(format_version=99))),
    "checkpoint format 1": lambda tmp, run, data: _copy_run(tmp, run, _edit_checkpoint(lambda s: s.update(format_version=1))),
    "checkpoint of another decoder": lambda tmp, run, data: _copy_run(
        tmp, run, _edit_checkpoint(lambda s: s["config"]["model"].update(decoder="bernoulli"))),
    "checkpoint of other shapes": lambda tmp, run, data: _copy_run(tmp, run, _edit_checkpoint(_layer_shapes)),
    "garbled metrics": lambda tmp, run, data: _copy_run(tmp, run, lambda p: p.write_text("{not json\n"), "metrics.jsonl"),
    "truncated mnist": lambda tmp, run, data: _truncated(data, "mnist.pkl.gz", tmp) or run,
    "truncated frey": lambda tmp, run, data: _truncated(data, "freyfaces.pkl", tmp) or run,
    "frey with one pixel changed": lambda tmp, run, data: _frey_pickle(tmp, _changed_frey_pixel(data)) or run,
    "pickle that runs code": lambda tmp, run, data: _frey_pickle(tmp, _RunsAShellCommand()) or run,
    "a file where a folder should be": lambda tmp, run, data: (tmp / "file").write_text("a file") and run,
}
MNIST = ["trainer=debug", "dataset.n_train=1000", "trainer.max_samples=2e3", "trainer.eval_first=1e3"]
BAD_INPUTS = [  # (arguments, the words of the one line, preparation)
    ([*TINY, "dataset=imagenet"], "unknown dataset option 'imagenet'; choose one of: frey, mnist", "run"),
    ([*TINY, "optimizer=rmsprop"], "unknown optimizer option 'rmsprop'", "run"),
    ([*TINY, "trainer=fast"], "unknown trainer option 'fast'; choose one of: debug, default", "run"),
    ([*TINY, "trainer.speed=3"], "unknown config key 'trainer.speed'", "run"),
    ([*TINY, "+colour=red"], "unknown config key 'colour'", "run"),
    ([*TINY, "trainer.batch_size=many"], "trainer.batch_size: Value 'many'", "run"),
    ([*TINY, "trainer.resume=maybe"], "trainer.resume: Value 'maybe' is not a valid bool", "run"),
    ([*TINY, "seed=1.5"], "seed: Value '1.5' of type 'float' could not be converted to Integer", "run"),
    ([*TINY, "model.hidden=abc"], "model.hidden: Invalid value assigned: str is not a ListConfig", "run"),
    ([*TINY, "trainer.on_nan=ignore"], "trainer.on_nan=ignore is not one of stop, skip_batch", "run"),
    ([*TINY, "device=gpu"], "device=gpu is not one of auto, cpu, cuda", "run"),
    ([*TINY, "trainer.batch_size=0"], "trainer.batch_size=0 must be positive", "run"),
    ([*TINY, "optimizer.lr=0"], "optimizer.lr=0.0 must be positive", "run"),
    ([*TINY, "optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be positive", "run"),
    ([*TINY, "trainer.max_samples=-1e6"], "trainer.max_samples=-1000000.0 must be positive", "run"),
    ([*TINY, "trainer.max_samples=2.5"], "trainer.max_samples=2.5 must be a whole number of samples", "run"),
    ([*TINY, "trainer.checkpoint_every=0"], "trainer.checkpoint_every=0.0 must be positive", "run"),
    ([*TINY, "estimator.n_samples=0"], "estimator.n_samples=0 must be positive", "run"),
    ([*TINY, "model.latent_dim=-3"], "model.latent_dim=-3 must be positive", "run"),
    ([*TINY, "model.hidden=[0]"], "model.hidden=[0] must hold positive layer sizes", "run"),
    ([*TINY, "trainer.batch_size=5000"], "trainer.batch_size=5000 exceeds the 1500 training points", "run"),
    ([*MNIST, "dataset.n_train=70000"], "dataset.n_train=70000 exceeds the 50000 training images", "run"),
    ([*TINY, "dataset.root=/nonexistent/folder", "dataset.download=false"], "frey not found in /nonexistent/folder", "run"),
    ([*MNIST, "dataset.root={tmp}/data", "dataset.download=false"], "could not read {tmp}/data/mnist.pkl.gz (EOFError", "truncated mnist"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "could not read {tmp}/data/freyfaces.pkl (UnpicklingError: pickle data was truncated)", "truncated frey"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "{tmp}/data/freyfaces.pkl does not hold the expected frey all pixels", "frey with one pixel changed"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "refusing to load posix.system from a data pickle", "pickle that runs code"),
    ([*TINY, "device=cuda"], "device=cuda but no CUDA GPU", "run"),
    ([*TINY, "hydra.run.dir={tmp}/file/run"], "cannot write {tmp}/file/run (Not a directory); choose a writable folder with hydra.run.dir=", "a file where a folder should be"),
    (TINY, "already holds a run; continue it with trainer.resume=true", "run"),
    ([*TINY, "trainer.resume=true", "seed=9"], "holds a run with a different config (seed: 0 there, 9 requested)", "run"),
    ([*TINY, "trainer.resume=true", "hydra.run.dir={tmp}/empty"], "trainer.resume=true but {tmp}/empty holds no run", "run"),
    ([*TINY, "trainer.resume=true"], "checkpoints/last.pt is not a readable vae-cli checkpoint (RuntimeError)", "truncated checkpoint"),
    (["resume_from={run}"], "checkpoints/last.pt is not a readable vae-cli checkpoint (UnpicklingError)", "foreign checkpoint"),
    (["resume_from={run}"], "checkpoints/last.pt is missing, so the run in {run} cannot continue", "missing checkpoint"),
    (["resume_from={run}"], f"has checkpoint format 99, this vae-cli reads format {CHECKPOINT_FORMAT}", "checkpoint format 99"),
    (["resume_from={run}"], "has checkpoint format 1, this vae-cli reads format 2; its model can still be evaluated (vae-eval, vae-report); "
                            "to train further start a new run", "checkpoint format 1"),
    (["resume_from={run}"], "was written by a run with model.decoder='bernoulli', not 'gaussian_sigmoid'", "checkpoint of another decoder"),
    (["resume_from={run}"], "does not fit the requested model (size mismatch for", "checkpoint of other shapes"),
    (["resume_from={run}"], "metrics.jsonl is not a vae-cli metrics file (JSONDecodeError)", "garbled metrics"),
    (["resume_from={tmp}/nowhere"], "{tmp}/nowhere holds no run (config.yaml is missing)", "run"),
    (["resume_from="], "resume_from= needs a run folder", "run"),
    (["resume_from={run}", "seed=3"], "'seed=3' cannot change when resuming", "run"),
    (["resume_from={run}", "--multirun"], "resume_from= takes one run folder and key=value overrides only, not '--multirun'", "run"),
    (["resume_from={run}", "trainer.max_samples=lots"], "trainer.max_samples: Value 'lots' of type 'str' could not be converted to Float", "run"),
    (["resume_from={run}", "trainer.max_samples=1e3"], "trainer.max_samples=1000 is below the 2000 samples", "run"),
    (["resume_from={run}", "device=cuda"], "device=cuda but no CUDA GPU", "run"),
]


def _case_id(args, needle, prepare):
    shown = " ".join(a for a in args if a not in TINY and a not in MNIST) or "rerun"
    return shown if prepare == "run" else f"{shown} [{prepare}]"


@pytest.mark.parametrize("args,needle,prepare", BAD_INPUTS, ids=[_case_id(*case) for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_folder_alone(finished_run, shared_data, tmp_path, args, needle, prepare):
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present, so device=cuda is valid here")
    run = PREPARE[prepare](tmp_path, finished_run, shared_data)
    fill = lambda text: text.replace("{run}", str(run)).replace("{tmp}", str(tmp_path))  # noqa: E731
    args = [fill(a) for a in args]
    if not any(a.startswith(("hydra.run.dir=", "resume_from=")) for a in args):
        args.append(f"hydra.run.dir={run}")
    before = _hashes(run)
    result = vae_train(*args, env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-train: error: "), result.stderr
    assert fill(needle) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _hashes(run) == before


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
