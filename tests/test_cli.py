"""The installed console scripts end to end: a run, a sweep, what they print while they work, their
help, and every bad input in one line that leaves nothing behind."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose_config, run_console_script
from vae_cli.config import validate
from vae_cli.data_files import FREY_URL, safe_unpickle
from vae_cli.jobs.evaluate import validate_eval
from vae_cli.jobs import cpu_threads
from vae_cli.runs import CHECKPOINT_FORMAT

SCRIPT = Path(sys.executable).parent / "vae-train"
TINY = ["trainer=debug", "dataset=frey", "trainer.max_samples=2e3", "evaluation.first=1e3", "speed.threads=1"]  # Frey Face: quick to load


def run_script(name: str, *args: str, env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return run_console_script(name, *args, env=env, cwd=cwd)


def vae_train(*args: str, env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_script("vae-train", *args, env_extra=env_extra, cwd=cwd)


def one_error_line(result: subprocess.CompletedProcess, prog: str) -> str:
    """The one line a mistake prints (exit code 2, no traceback)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_data):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = vae_train(*TINY, f"hydra.run.dir={run}", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"run folder: {run}"  # first, before the data loads
    assert f"metrics:    {run / 'metrics.jsonl'}" in result.stdout
    assert "checkpoint:" in result.stdout and "figures:" in result.stdout
    assert "tensorboard:" not in result.stdout and "mlflow:" not in result.stdout  # no logger asked for
    for samples in (0, 1000, 2000):  # the bar says why it stands still
        assert f"evaluating train and test bounds at {samples} samples" in result.stderr
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
    "checkpoint format 2": lambda tmp, run, data: _copy_run(tmp, run, _edit_checkpoint(lambda s: s.update(format_version=2))),
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
MNIST = ["trainer=debug", "dataset.n_train=1000", "trainer.max_samples=2e3", "evaluation.first=1e3"]
BAD_INPUTS = [  # (arguments, the words of the one line, preparation)
    ([*TINY, "dataset=imagenet"], "unknown dataset option 'imagenet'; choose one of: frey, mnist", "run"),
    ([*TINY, "optimizer=rmsprop"], "unknown optimizer option 'rmsprop'", "run"),
    ([*TINY, "trainer=fast"], "unknown trainer option 'fast'; choose one of: debug, default", "run"),
    ([*TINY, "trainer.speed=3"], "unknown config key 'trainer.speed'", "run"),
    ([*TINY, "+colour=red"], "unknown config key 'colour'", "run"),
    ([*TINY, "trainer.batch_size=many"], "trainer.batch_size: Value 'many'", "run"),
    ([*TINY, "trainer.figures=maybe"], "trainer.figures: Value 'maybe' is not a valid bool", "run"),
    ([*TINY, "trainer.resume=true"], "unknown config key 'trainer.resume'", "run"),  # the former spelling of resume_from=
    ([*TINY, "logger=jsonl"], "unknown logger option 'jsonl'; choose one of: mlflow, tensorboard", "run"),  # metrics.jsonl is always written
    ([*TINY, "seed=1.5"], "seed: Value '1.5' of type 'float' could not be converted to Integer", "run"),
    ([*TINY, "model.hidden=abc"], "model.hidden: Invalid value assigned: str is not a ListConfig", "run"),
    ([*TINY, "trainer.on_nan=ignore"], "trainer.on_nan: Invalid value 'ignore', expected one of [stop, skip_batch]", "run"),
    ([*TINY, "trainer.on_existing=continue"], "trainer.on_existing: Invalid value 'continue', expected one of [refuse, resume]", "run"),
    ([*TINY, "reading=paper"], "reading: Invalid value 'paper', expected one of [author_code, paper_text]", "run"),
    ([*TINY, "dataset.split=random"], "dataset.split: Invalid value 'random', expected one of [shuffled, sequential]", "run"),
    ([*TINY, "device=gpu"], "device=gpu is not one of auto, cpu, cuda", "run"),
    ([*TINY, "trainer.batch_size=0"], "trainer.batch_size=0 must be positive", "run"),
    ([*TINY, "optimizer.lr=0"], "optimizer.lr=0.0 must be positive", "run"),
    ([*TINY, "optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be positive", "run"),
    ([*TINY, "trainer.max_samples=-1e6"], "trainer.max_samples=-1000000.0 must be a positive whole number of samples", "run"),
    ([*TINY, "trainer.max_samples=2.5"], "trainer.max_samples=2.5 must be a positive whole number of samples", "run"),
    ([*TINY, "trainer.checkpoint_every=0"], "trainer.checkpoint_every=0.0 must be a positive whole number of samples", "run"),
    ([*TINY, "estimator.n_samples=0"], "estimator.n_samples=0 must be positive", "run"),
    ([*TINY, "model.latent_dim=-3"], "model.latent_dim=-3 must be positive", "run"),
    ([*TINY, "model.hidden=[0]"], "model.hidden=[0] must hold positive layer sizes", "run"),
    ([*TINY, "optimizer.warmup_steps=-1"], "optimizer.warmup_steps=-1 must be >= 0", "run"),
    ([*TINY, "model.encoder_log_var_scale=0"], "model.encoder_log_var_scale=0.0 must be positive", "run"),
    ([*TINY, "trainer.batch_size=5000"], "trainer.batch_size=5000 exceeds the 1600 training points", "run"),
    ([*TINY, "reading=paper_text", "trainer.batch_size=1550"], "trainer.batch_size=1550 exceeds the 1500 training points", "run"),
    ([*TINY, "dataset.train_frames=1965"], "dataset.train_frames=1965 must lie in 1..1964", "run"),
    ([*MNIST, "dataset.n_train=70000"], "dataset.n_train=70000 exceeds the 50000 training images", "run"),
    ([*TINY, "dataset.root=/nonexistent/folder", "dataset.download=false"], "frey not found in /nonexistent/folder", "run"),
    ([*MNIST, "dataset.root={tmp}/data", "dataset.download=false"], "could not read {tmp}/data/mnist.pkl.gz (EOFError", "truncated mnist"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "could not read {tmp}/data/freyfaces.pkl (UnpicklingError: pickle data was truncated)", "truncated frey"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "{tmp}/data/freyfaces.pkl does not hold the expected frey all pixels", "frey with one pixel changed"),
    ([*TINY, "dataset.root={tmp}/data", "dataset.download=false"], "refusing to load posix.system from a data pickle", "pickle that runs code"),
    ([*TINY, "device=cuda"], "device=cuda but no CUDA GPU", "run"),
    ([*TINY, "hydra.run.dir={tmp}/file/run"], "cannot write {tmp}/file/run (Not a directory); choose a writable folder with hydra.run.dir=", "a file where a folder should be"),
    (TINY, "{run} already holds a run; continue that run with vae-train resume_from={run}, or start this one in a new hydra.run.dir=",
     "run"),
    ([*TINY, "trainer.on_existing=resume", "seed=9"], "holds a run with a different config (seed: 0 there, 9 requested)", "run"),
    ([*TINY, "trainer.on_existing=resume", "reading=paper_text"],
     "holds a run with a different config (dataset.split: 'shuffled' there, 'sequential' requested)", "run"),
    ([*TINY, "trainer.on_existing=resume"], "checkpoints/last.pt is not a readable vae-cli checkpoint (RuntimeError)", "truncated checkpoint"),
    ([*TINY, "trainer.on_existing=resume"], "checkpoints/last.pt is missing, so the run in {run} cannot continue", "missing checkpoint"),
    (["resume_from={run}"], "checkpoints/last.pt is not a readable vae-cli checkpoint (UnpicklingError)", "foreign checkpoint"),
    (["resume_from={run}"], "checkpoints/last.pt is missing, so the run in {run} cannot continue", "missing checkpoint"),
    (["resume_from={run}"], f"has checkpoint format 99, this vae-cli reads format {CHECKPOINT_FORMAT}", "checkpoint format 99"),
    (["resume_from={run}"], "has checkpoint format 1, this vae-cli reads format 3; its model can still be evaluated (vae-eval, vae-report); "
                            "to train further start a new run", "checkpoint format 1"),
    (["resume_from={run}"], "has checkpoint format 2, this vae-cli reads format 3; its model can still be evaluated (vae-eval, vae-report); "
                            "to train further start a new run", "checkpoint format 2"),
    (["resume_from={run}"], "was written by a run with model.decoder='bernoulli', not 'gaussian_sigmoid'", "checkpoint of another decoder"),
    (["resume_from={run}"], "does not fit the requested model (size mismatch for", "checkpoint of other shapes"),
    (["resume_from={run}"], "metrics.jsonl is not a vae-cli metrics file (JSONDecodeError)", "garbled metrics"),
    (["resume_from={tmp}/nowhere"], "{tmp}/nowhere holds no run (config.yaml is missing)", "run"),
    (["resume_from="], "resume_from= needs a run folder", "run"),
    (["{run}"], "'{run}' is not key=value; to continue that run write vae-train resume_from={run}", "run"),
    (["resume_from={run}", "seed=3"], "'seed=3' cannot change when resuming", "run"),
    (["resume_from={run}", "reading=paper_text"], "'reading=paper_text' cannot change when resuming", "run"),
    (["resume_from={run}", "optimizer.warmup_steps=0"], "'optimizer.warmup_steps=0' cannot change when resuming", "run"),
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


def test_a_relaunched_sweep_skips_its_finished_runs(tmp_path, shared_data):
    """As the presets relaunch: job folders named by the swept keys, trainer.on_existing=resume."""
    sweep = tmp_path / "sweep"
    args = ("--multirun", "model.latent_dim=2,3", *TINY, "trainer.figures=false", "trainer.on_existing=resume", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.override_dirname}")
    first = vae_train(*args, env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert first.returncode == 0, first.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [f"dataset=frey,evaluation.first=1000.0,model.latent_dim={nz},trainer=debug" for nz in (2, 3)]  # no resumable key
    before = {job: _hashes(sweep / job) for job in jobs}
    again = vae_train(*args, "trainer.progress=false", env_extra={"VAE_CLI_DATA": str(shared_data)})  # a resumable change
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished already (2000 samples), nothing to do") == 2
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == jobs and {job: _hashes(sweep / job) for job in jobs} == before


def test_resuming_a_finished_run_has_nothing_to_do_and_changes_nothing(finished_run, shared_data):
    """Both ways of resuming: resume_from= (a user) and trainer.on_existing=resume (a relaunched sweep)."""
    before = _hashes(finished_run)
    for args in (["resume_from=" + str(finished_run)], [*TINY, "trainer.on_existing=resume", f"hydra.run.dir={finished_run}"]):
        result = vae_train(*args, env_extra={"VAE_CLI_DATA": str(shared_data)})
        assert result.returncode == 0, result.stderr
        assert f"{finished_run}: finished already (2000 samples), nothing to do" in result.stdout
        assert _hashes(finished_run) == before


def test_resume_from_continues_a_run_with_a_larger_budget(finished_run, shared_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    rows_before = (run / "metrics.jsonl").read_text().splitlines()
    result = vae_train(f"resume_from={run}", "trainer.max_samples=4e3", "trainer.progress=false",
                       env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"run folder: {run}", f"resuming {run} from its checkpoint at 2000 samples"]
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert rows[: len(rows_before)] == rows_before and len(rows) > len(rows_before)  # earlier rows kept as they were
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["format_version"] == CHECKPOINT_FORMAT and state["progress"]["samples"] == 4000
    assert state["config"]["trainer"]["max_samples"] == 4000 and "max_samples: 4000" in (run / "config.yaml").read_text()


# --- what the scripts print while they work, and their help ------------------------------------------

def test_a_run_lists_its_tensorboard_folder_and_mlflow_run_at_the_end(tmp_path, shared_data):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = vae_train(*TINY, "logger=[tensorboard,mlflow]", f"logger.mlflow_uri={uri}", "trainer.progress=false",
                       f"hydra.run.dir={run}", env_extra={"VAE_CLI_DATA": str(shared_data)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tracked = json.loads((run / "mlflow.json").read_text())
    assert tracked["tracking_uri"] == uri
    assert f"tensorboard: {run / 'tb'}/ (tensorboard --logdir {run / 'tb'})" in result.stdout.splitlines()
    assert f"mlflow:     run {tracked['run_id']} in {uri} (mlflow ui --backend-store-uri {uri})" in result.stdout.splitlines()
    assert any((run / "tb").iterdir())


def test_a_sweep_labels_each_jobs_lines_with_its_folder(tmp_path, shared_data):
    """Jobs in parallel (hydra/launcher=joblib) print into one terminal: each line and bar says whose it
    is. --multirun between the overrides, as the presets' usage lines write it."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    result = vae_train("model.latent_dim=2,3", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
                       "trainer.figures=false", f"hydra.sweep.dir={sweep}", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "[HYDRA]" not in line]
    for job in ("0", "1"):
        assert f"[{job}] run folder: {sweep / job}" in lines and f"[{job}] metrics:    {sweep / job / 'metrics.jsonl'}" in lines
        assert f"[{job}] samples       2,000  train_bound" in result.stdout
        assert f"[{job}] aevb frey Nz=" in result.stderr  # the bar
    assert all(line.startswith(("[0] ", "[1] ")) for line in lines), lines


def test_null_threads_are_the_cores_this_process_may_use_and_come_back_after_the_job(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # e.g. `taskset -c 0` or a 1-CPU SLURM job
    with cpu_threads(None, True) as threads:
        assert threads == torch.get_num_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4096)), raising=False)
    with cpu_threads(None, True) as threads:
        assert threads == torch.get_num_threads() == before  # at most torch's own default (OMP_NUM_THREADS)
    with cpu_threads(None, True, small_tensors=True) as threads:
        assert threads == torch.get_num_threads() == 1  # HMC on small tensors
    with cpu_threads(3, True) as threads:
        assert threads == torch.get_num_threads() == 3
    assert torch.get_num_threads() == before


def _help_groups(text: str) -> dict[str, str]:
    """The lines of the help's group list: group -> the rest of its line."""
    section = text.split("Groups (", 1)[1].split("\n\n", 1)[0] if "Groups (" in text else text.split("Estimators (", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line for line in section.splitlines()[1:]}


def _help_examples(text: str, prog: str) -> list[list[str]]:
    """The example commands, as argument lists (the words after two spaces are their comment)."""
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [shlex.split(re.split(r"\s{2,}", line.strip())[0])[1:] for line in block.splitlines() if line.strip().startswith(prog)]


@pytest.mark.parametrize("prog", ["vae-train", "vae-eval"])
def test_help_says_what_the_tool_does_its_groups_keys_and_examples(prog):
    result = run_script(prog, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"{prog}: ") and "Hydra" not in text and "_schema" not in text
    assert f"{prog} --cfg job --resolve" in text.replace("run_dir=DIR ", "")  # where the full key list is
    groups = _help_groups(text)
    conf = REPO / "conf"
    if prog == "vae-train":
        expected = {g.name for g in conf.iterdir() if g.is_dir() and g.name[0] != "_" and g.name not in ("likelihood", "hydra")}
        expected |= {"hydra/launcher"}
        assert set(groups) == expected  # no vae-eval group
        for group in expected - {"hydra/launcher"}:  # every option of conf/<group>/, written out
            assert all(re.search(rf"\b{o.stem}\b", groups[group]) for o in (conf / group).glob("*.yaml")), (group, groups[group])
        assert all(o in groups["hydra/launcher"] for o in ("basic", "joblib", "slurm", 'pip install -e ".[cluster]"'))
    else:
        assert set(groups) == {o.stem for o in (conf / "likelihood").glob("*.yaml")}
        assert not re.search(r"^\s+(dataset|method|optimizer|trainer)\s", text, re.M)  # no vae-train group
    examples = _help_examples(text, prog)
    assert len(examples) == 3
    for args in examples:  # each composes and validates as written (its sweep: with the first value of each list)
        args = [a.split(",")[0] if "," in a else a for a in args if a != "--multirun"]
        cfg = compose_config(args, config_name="train" if prog == "vae-train" else "eval")
        (validate if prog == "vae-train" else validate_eval)(cfg)


def test_report_help_has_examples_and_a_wrong_value_is_one_line(tmp_path):
    result = run_script("vae-report", "--help")
    assert result.returncode == 0 and "Draw the paper's figures" in result.stdout and "examples:" in result.stdout
    assert "vae-report multirun/fig2_mnist/full" in result.stdout
    line = one_error_line(run_script("vae-report", str(tmp_path), "--train-curve", "sideways"), "vae-report")
    assert "argument --train-curve: invalid choice: 'sideways'" in line
    assert one_error_line(run_script("vae-report"), "vae-report").startswith("vae-report: error: the following arguments are required")
    assert list(tmp_path.iterdir()) == []


# --- mistakes that used to leave folders behind or say too little -----------------------------------

@pytest.mark.parametrize("prog", ["vae-train", "vae-eval"])
def test_multirun_with_cfg_is_one_line(prog, tmp_path):
    line = one_error_line(run_script(prog, "run_dir=x" if prog == "vae-eval" else "seed=1,2", "--multirun", "--cfg", "job",
                                     cwd=tmp_path), prog)
    assert "--cfg prints the config of one job, not of a sweep; drop --multirun" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "slurm"])
def test_a_cluster_launcher_without_its_plugin_names_the_extra_to_install(launcher, tmp_path):
    shadow = tmp_path / "shadow" / "hydra_plugins"  # a hydra_plugins package that hides the installed plugins
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    line = one_error_line(vae_train("--multirun", f"hydra/launcher={launcher}", *TINY, env_extra={"PYTHONPATH": path}, cwd=work), "vae-train")
    assert 'is not installed; install it with pip install -e ".[cluster]" in the vae-cli checkout' in line
    assert list(work.iterdir()) == []


def test_a_logger_without_its_package_is_refused_before_anything_is_written(tmp_path, shared_data):
    shadow = tmp_path / "shadow" / "tensorboard"  # a tensorboard that cannot be imported
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    work = tmp_path / "work"
    work.mkdir()
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)
    result = vae_train(*TINY, "logger=tensorboard", env_extra={"PYTHONPATH": path, "VAE_CLI_DATA": str(shared_data)}, cwd=work)
    assert one_error_line(result, "vae-train") == 'vae-train: error: logger=tensorboard needs the tensorboard package: pip install -e ".[tensorboard]" in the vae-cli checkout'
    assert [p for p in work.rglob("*") if p.name != "outputs"] == []  # no outputs/<date>/<time>/ left behind


def test_a_failed_job_leaves_no_empty_run_folder_and_removes_nothing_else(tmp_path, shared_data):
    today = tmp_path / "outputs" / datetime.date.today().isoformat()
    for args in (["optimizer.lr=0"], ["trainer.batch_size=5000"], ["device=nonsense"]):  # checked before and after the data loads
        result = vae_train(*TINY, *args, env_extra={"VAE_CLI_DATA": str(shared_data)}, cwd=tmp_path)
        one_error_line(result, "vae-train")
        assert not today.exists(), list(tmp_path.rglob("*"))
    (today / "earlier").mkdir(parents=True)
    (today / "earlier" / "notes.txt").write_text("kept")
    one_error_line(vae_train(*TINY, "trainer.batch_size=5000", env_extra={"VAE_CLI_DATA": str(shared_data)}, cwd=tmp_path), "vae-train")
    assert sorted(p.relative_to(today).as_posix() for p in today.rglob("*")) == ["earlier", "earlier/notes.txt"]


def test_a_new_run_that_fails_before_its_first_step_removes_its_files_and_can_run_again(tmp_path, shared_data):
    """A compile failure (no working C++ compiler) at the first step, after config.yaml, the checkpoint
    at sample 0, the metrics row at 0 and tb/ were written: they go, a file that was there stays."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    args = [*TINY, "device=cpu", "logger=tensorboard", "trainer.progress=false", f"hydra.run.dir={run}"]
    broken = {"VAE_CLI_DATA": str(shared_data), "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = vae_train(*args, "speed.compile=true", env_extra=broken)
    assert "speed.compile=true: torch.compile failed" in one_error_line(result, "vae-train")
    assert "compiling the update (speed.compile=true): tens of seconds" in result.stdout  # said before the pause
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    again = vae_train(*args, "speed.compile=false", env_extra={"VAE_CLI_DATA": str(shared_data)})
    assert again.returncode == 0, again.stderr  # the folder holds no run: it is claimed afresh
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "last.pt").is_file()


def test_a_leading_tilde_in_an_override_is_the_home_folder(tmp_path, shared_data):
    (tmp_path / "data").symlink_to(shared_data)
    result = vae_train(*TINY, "trainer.figures=false", "dataset.root=~/data", "hydra.run.dir=~/run", env_extra={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert f"root: {tmp_path / 'data'}" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_failed_download_names_the_reason_the_urls_and_the_fix(tmp_path):
    """No network needed: the download goes through a proxy that refuses connections."""
    proxy = "http://127.0.0.1:9"  # the discard port: nothing listens
    result = vae_train(*TINY, f"dataset.root={tmp_path / 'nodata'}",
                       env_extra={"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "http_proxy": proxy, "NO_PROXY": "",
                                  "no_proxy": ""}, cwd=tmp_path)
    line = one_error_line(result, "vae-train")
    assert re.search(rf"could not download frey into {re.escape(str(tmp_path / 'nodata'))} \(\w+: .+; tried {re.escape(FREY_URL)}\); "
                     rf"copy freyfaces.pkl or frey_rawface.mat into .* by hand, or set dataset.root= \(or the VAE_CLI_DATA variable\)", line), line
    assert not (tmp_path / "outputs").exists() or list((tmp_path / "outputs").iterdir()) == []
