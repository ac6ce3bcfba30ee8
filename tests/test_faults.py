"""Runs survive faults: kills at any moment, signals, failing writes, non-finite values.

The subprocess tests kill the real `vae-train` with SIGKILL or SIGTERM at random moments (fixed
seeds for the test's own randomness), resume it (`vae-train resume_from=DIR`, or as a relaunched sweep
does, the same command with `trainer.on_existing=resume`), and compare its final checkpoint and
metrics.jsonl with an uninterrupted run: identical on CPU. The in-process tests place a fault exactly
where timing cannot: between the metrics and the checkpoint write, half-way through a checkpoint write,
a NaN in a chosen minibatch, an infinite gradient. The guard's own tests feed it the non-finite flags
the updates return (`optim.apply_gradients`, `optim.ascend`).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import compose_config
import vae_cli.jobs.train as train_module
from vae_cli import runs
from vae_cli.errors import RunStopped, UserError
from vae_cli.jobs.train import train
from vae_cli.optim import NonFiniteGuard, StepsReport, apply_gradients, ascend, build_optimizer
from vae_cli.runs import CHECKPOINT_FILE, WALL_CLOCK_FIELDS, MetricsLog, load_checkpoint, read_metrics, resume_config
from vae_cli.signals import GracefulStop, InterruptCheck

SCRIPT = Path(sys.executable).parent / "vae-train"
# Small and busy (Frey Face: quick to load): an evaluation every 10 steps, a checkpoint every 20, so
# a kill lands in steps, evaluations, metrics writes, checkpoint writes and the final figures alike.
KILL_RUN = ["dataset=frey", "model.latent_dim=5", "trainer.max_samples=1.5e4", "evaluation.schedule=linear", "evaluation.every=1e3",
            "trainer.checkpoint_every=2e3", "evaluation.train_points=500", "evaluation.test_points=500",
            "trainer.progress=false", "speed.threads=1"]
IN_PROCESS = ["dataset.n_train=1000", "evaluation.schedule=linear", "evaluation.every=1e3", "trainer.checkpoint_every=1e3",
              "evaluation.train_points=500", "evaluation.test_points=500", "trainer.progress=false", "trainer.figures=false"]


def _without_wall_clock(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in rows]


def _same(a, b) -> bool:
    """Equal nested containers of tensors (bit for bit) and plain values."""
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], v) for k, v in b.items())
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.is_tensor(a) and torch.equal(a, b) if torch.is_tensor(b) else a == b


def assert_same_run(run: Path, reference: Path) -> None:
    """Same parameters, optimizer state, minibatch sampler, generators, counters and metrics (bar
    wall-clock fields)."""
    a, b = load_checkpoint(run / CHECKPOINT_FILE), load_checkpoint(reference / CHECKPOINT_FILE)
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    method_a, method_b = runs.flatten(a["method"]), runs.flatten(b["method"])
    assert method_a.keys() == method_b.keys()
    for name, x in method_b.items():
        assert (torch.equal(method_a[name], x) if torch.is_tensor(x) else method_a[name] == x), name
    for name, state in b["rng"].items():
        assert torch.equal(a["rng"][name], state), name
    drop = lambda p: {k: v for k, v in p.items() if k != "wall_seconds"}  # noqa: E731
    assert drop(a["progress"]) == drop(b["progress"])
    assert _same(a["sampler"], b["sampler"]), (a["sampler"], b["sampler"])
    assert _without_wall_clock(read_metrics(run)) == _without_wall_clock(read_metrics(reference))
    for figure in (reference / "figures").glob("*.png"):
        assert (run / "figures" / figure.name).read_bytes() == figure.read_bytes(), figure.name
    assert not list(run.rglob(runs.TEMPORARY_GLOB)), "a temporary file was left behind"


# --- the real console script, killed at random moments ---------------------------------------------

def _launch(args: list[str], data: Path) -> subprocess.Popen:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: install the package with the README's command"
    env = {**os.environ, "VAE_CLI_DATA": str(data)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_until_training(proc: subprocess.Popen, run: Path, timeout: float = 300) -> float:
    """Block until the process has (re)written the run's config.yaml, i.e. claimed the folder and
    restored any checkpoint; return that moment. Kills before it find nothing written yet."""
    config = run / runs.CONFIG_FILE
    before = config.stat().st_ino if config.exists() else None
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if config.stat().st_ino != before:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    return time.monotonic()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, shared_data):
    """An uninterrupted run, and how long it trains (from claiming its folder to its exit)."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    proc = _launch([*KILL_RUN, f"hydra.run.dir={run}"], shared_data)
    started = _wait_until_training(proc, run)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return run, time.monotonic() - started


def _rows(run: Path) -> int:
    path = run / runs.METRICS_FILE
    return len(path.read_text().splitlines()) if path.exists() else 0


def interrupt_and_resume(run: Path, data: Path, sig: int, n_signals: int, seconds: float, rng: random.Random,
                         resume_commands: list[list[str]]) -> list[dict]:
    """Start the run; after each (re)start wait until metrics.jsonl has 0-4 more rows (drawn), then
    a random part of one evaluation interval (from the uninterrupted run's `seconds`), and send
    `sig`; resume with the next of `resume_commands` (a SIGTERM'd run: with the command its message
    names) until the run finishes. Waiting on rows, not on the clock alone, keeps the signals inside
    the run however busy the machine is."""
    log, args, interval = [], [*KILL_RUN, f"hydra.run.dir={run}"], seconds / 16
    for attempt in range(n_signals + 1):
        proc = _launch(args, data)
        _wait_until_training(proc, run)
        if attempt < n_signals:
            rows, jitter = _rows(run) + rng.randint(0, 4), rng.uniform(0, 1) * interval
            while proc.poll() is None and _rows(run) < rows:
                time.sleep(0.002)
            time.sleep(jitter)
            if proc.poll() is None:
                proc.send_signal(sig)
        out, err = proc.communicate(timeout=600)
        kept = load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] if (run / CHECKPOINT_FILE).exists() else None
        log.append({"after_rows": rows if attempt < n_signals else None, "jitter_s": round(jitter, 3) if attempt < n_signals else None,
                    "rc": proc.returncode, "checkpoint_samples": kept, "metrics_rows": _rows(run),
                    "leftover_temporaries": len(list(run.rglob(runs.TEMPORARY_GLOB))), "stderr": err.strip()})
        if proc.returncode == 0:
            return log
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM, log
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("vae-train: SIGTERM: saved a checkpoint at step "), log
            args = shlex.split(lines[0].split("resume with: ", 1)[1])[1:]  # the exact command it prints
        else:
            assert proc.returncode == -signal.SIGKILL, log
            args = resume_commands[attempt % len(resume_commands)]
    raise AssertionError(f"the run did not finish: {log}")


@pytest.mark.slow  # five kills of a real run; the SIGTERM test and the in-process kills below cover the same resume path
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, shared_data, reference_run):
    reference, seconds = reference_run
    run = tmp_path / "killed"
    ways = [[*KILL_RUN, "trainer.on_existing=resume", f"hydra.run.dir={run}"],  # a relaunched sweep
            [f"resume_from={run}"],
            [f"resume_from={run}", "trainer.max_samples=1.5e4"]]
    rng = random.Random(20131220)  # AEVB's arXiv date; the test's own randomness
    log = interrupt_and_resume(run, shared_data, signal.SIGKILL, 5, seconds, rng, ways)
    print(*log, sep="\n")
    assert sum(entry["rc"] == -signal.SIGKILL for entry in log) >= 2, log  # kills landed before the end
    assert_same_run(run, reference)


def test_a_second_trainer_in_a_folder_being_trained_is_refused_in_one_line(tmp_path, shared_data):
    """resume_from= on a run still training (or the same command again, or a relaunched sweep) would
    start a second trainer writing the same files: refused, naming the first one's pid."""
    run = tmp_path / "run"
    long_run = [a for a in KILL_RUN if not a.startswith("trainer.max_samples=")] + ["trainer.max_samples=1e8"]
    proc = _launch([*long_run, f"hydra.run.dir={run}"], shared_data)
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    env.pop("HYDRA_FULL_ERROR", None)
    try:
        _wait_until_training(proc, run)
        assert proc.poll() is None
        refusal = re.compile(rf"vae-train: error: {re.escape(str(run))} is being trained by another vae-train( \(pid {proc.pid}\))?; "
                             "wait for it to finish or stop it")
        for args in ([f"resume_from={run}"], [*long_run, "trainer.on_existing=resume", f"hydra.run.dir={run}"],
                     [*long_run, f"hydra.run.dir={run}"]):
            second = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
            assert second.returncode == 2, (second.stdout, second.stderr)
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and refusal.fullmatch(lines[0]), second.stderr
            if os.path.exists("/proc/locks"):
                assert f"(pid {proc.pid})" in lines[0]
        assert proc.poll() is None  # the first one trains on
    finally:
        proc.kill()
        proc.communicate()


def test_sigterm_saves_a_checkpoint_prints_the_resume_command_and_resumes_exactly(tmp_path, shared_data, reference_run):
    reference, seconds = reference_run
    run = tmp_path / "terminated"
    log = interrupt_and_resume(run, shared_data, signal.SIGTERM, 3, seconds, random.Random(143), [])
    print(*log, sep="\n")
    assert sum(entry["rc"] == 128 + signal.SIGTERM for entry in log) >= 1, log
    assert_same_run(run, reference)


# --- the signal helper ------------------------------------------------------------------------------

def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at the next bytecode


def test_a_first_signal_asks_to_stop_a_second_exits_at_once_and_handlers_come_back(capfd):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with GracefulStop("vae-train: second {signal}: stopped at once") as stop:
        assert not stop.requested
        _deliver(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(SystemExit) as exited:
            _deliver(signal.SIGINT)
        assert exited.value.code == 130
    assert capfd.readouterr().err == "vae-train: second SIGINT: stopped at once\n"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_sigint_in_process_stops_at_a_step_boundary_and_restores_the_handlers(tmp_path, shared_data, monkeypatch):
    """train() is also called in-process (tests, Hydra's multirun): it must hand SIGINT back."""
    evaluation_rows = train_module.evaluation_rows

    def interrupted(cfg, learner, data, samples, step):  # Ctrl-C during the evaluation at 2000 samples
        if samples == 2000:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluation_rows(cfg, learner, data, samples, step)

    monkeypatch.setattr(train_module, "evaluation_rows", interrupted)
    before = signal.getsignal(signal.SIGINT)
    cfg = compose_config([f"dataset.root={shared_data}", *IN_PROCESS, "trainer.max_samples=4e3"])
    with pytest.raises(RunStopped, match=r"^SIGINT: saved a checkpoint at step 20 \(2000 samples\) in .*; resume with: vae-train resume_from=") as stopped:
        train(cfg, run_dir=tmp_path / "run")
    assert stopped.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["progress"]["samples"] == 2000


# --- kills and failures at exact places ------------------------------------------------------------

class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs (it is not an Exception, so nothing catches it)."""


def _train(tmp_path, name, *overrides, data_root):
    return train(compose_config([f"dataset.root={data_root}", *IN_PROCESS, *overrides]), run_dir=tmp_path / name)


def _resume(run: Path, *overrides):
    """What `vae-train resume_from=RUN [key=value ...]` runs: the run's own config.yaml."""
    return train(resume_config(run, list(overrides)), run_dir=run)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("straight")
    _train(folder, "run", "trainer.max_samples=4e3", data_root=shared_data)
    return folder / "run"


def test_a_kill_between_the_metrics_write_and_the_checkpoint_write_resumes_exactly(tmp_path, shared_data, straight_run, monkeypatch):
    extend = MetricsLog.extend  # how the loop writes an evaluation's rows

    def extend_then_die(self, rows):
        extend(self, rows)
        if rows[-1]["samples"] == 3000:  # the row is on disk, the checkpoint at 3000 is not
            raise SimulatedKill

    monkeypatch.setattr(MetricsLog, "extend", extend_then_die)
    with pytest.raises(SimulatedKill):
        _train(tmp_path, "run", "trainer.max_samples=4e3", data_root=shared_data)
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert rows[-1]["samples"] == 3000
    assert load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] == 2000
    rows[-1]["train_bound"] = 0.0  # mark the row past the checkpoint: it must be dropped, not kept
    (run / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(MetricsLog, "extend", extend)
    _resume(run)
    assert_same_run(run, straight_run)  # the row at 3000 was dropped and recomputed, identically


def test_a_kill_after_the_last_checkpoint_before_the_figures_leaves_a_run_that_draws_them_on_resume(tmp_path, shared_data, monkeypatch, capsys):
    def killed(*args, **kwargs):
        raise SimulatedKill

    draw = train_module.save_run_figures
    monkeypatch.setattr(train_module, "save_run_figures", killed)
    with pytest.raises(SimulatedKill):
        _train(tmp_path, "run", "trainer.max_samples=2e3", "trainer.figures=true", data_root=shared_data)
    run = tmp_path / "run"
    assert load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] == 2000 and read_metrics(run)[-1]["samples"] == 2000
    assert not (run / "figures" / "samples.png").exists()
    monkeypatch.setattr(train_module, "save_run_figures", draw)
    _train(tmp_path, "run", "trainer.max_samples=2e3", "trainer.figures=true", "trainer.on_existing=resume", data_root=shared_data)
    assert "finished already (2000 samples); wrote its missing figures" in capsys.readouterr().out
    _train(tmp_path, "straight", "trainer.max_samples=2e3", "trainer.figures=true", data_root=shared_data)
    assert sorted(p.name for p in (tmp_path / "straight" / "figures").iterdir()) == ["reconstructions.png", "samples.png"]
    assert_same_run(run, tmp_path / "straight")  # the figures byte for byte too


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_and_resumes_exactly(tmp_path, shared_data, straight_run, monkeypatch):
    write = runs.atomic_write_bytes

    def die_half_way(path, data):
        if path.name == "last.pt" and b"progress" in data and load_samples(data) == 3000:
            partial = path.parent / f".{path.name}.killed.tmp"
            partial.write_bytes(data[: len(data) // 2])  # what SIGKILL leaves: a partial temporary file
            raise SimulatedKill
        write(path, data)

    def load_samples(data):
        import io

        return torch.load(io.BytesIO(data), weights_only=True)["progress"]["samples"]

    monkeypatch.setattr(runs, "atomic_write_bytes", die_half_way)
    with pytest.raises(SimulatedKill):
        _train(tmp_path, "run", "trainer.max_samples=4e3", data_root=shared_data)
    run = tmp_path / "run"
    assert load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] == 2000
    assert list(run.rglob(runs.TEMPORARY_GLOB))
    monkeypatch.setattr(runs, "atomic_write_bytes", write)
    _resume(run)
    assert_same_run(run, straight_run)  # and the partial temporary file is gone


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(tmp_path, shared_data, straight_run, monkeypatch):
    def die(run_dir, state):  # killed right after config.yaml, before the checkpoint at sample 0
        raise SimulatedKill

    monkeypatch.setattr(train_module, "save_checkpoint", die)
    with pytest.raises(SimulatedKill):
        _train(tmp_path, "run", "trainer.max_samples=4e3", data_root=shared_data)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {runs.CONFIG_FILE}
    monkeypatch.undo()
    _train(tmp_path, "run", "trainer.max_samples=4e3", "trainer.on_existing=resume", data_root=shared_data)
    assert_same_run(run, straight_run)


def _failing_first_step(monkeypatch) -> None:
    """The first step of every learner built fails, as a compile failure or a crashed backend does."""
    build = train_module.build_learner

    def build_failing(cfg, data, device):
        learner = build(cfg, data, device)

        def fail(*args):
            raise RuntimeError("the backend crashed")

        learner.step_fn = fail
        return learner

    monkeypatch.setattr(train_module, "build_learner", build_failing)


def test_a_new_run_failing_before_its_first_step_removes_its_files_and_runs_again(tmp_path, shared_data, straight_run, monkeypatch):
    """config.yaml, the checkpoint at sample 0 and the metrics row at 0 go (a file that was there stays),
    so the same call runs again; a resumed run failing at its first step keeps everything."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    _failing_first_step(monkeypatch)
    with pytest.raises(RuntimeError, match="the backend crashed"):
        _train(tmp_path, "run", "trainer.max_samples=4e3", data_root=shared_data)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    _train(tmp_path, "run", "trainer.max_samples=2e3", data_root=shared_data)
    kept = {p: p.read_bytes() for p in (run / CHECKPOINT_FILE, run / runs.METRICS_FILE)}
    _failing_first_step(monkeypatch)
    with pytest.raises(RuntimeError, match="the backend crashed"):
        _train(tmp_path, "run", "trainer.max_samples=4e3", "trainer.on_existing=resume", data_root=shared_data)
    assert {p: p.read_bytes() for p in kept} == kept and (run / runs.CONFIG_FILE).is_file()
    monkeypatch.undo()
    _resume(run)  # and it continues as if nothing had happened
    assert_same_run(run, straight_run)


def test_a_non_finite_bound_of_the_initial_model_points_at_the_model_and_leaves_no_file(tmp_path, shared_data, monkeypatch):
    """Before any update there is no good checkpoint to resume from, and no stepsize to lower."""
    rows = train_module.evaluation_rows

    def nan_at_the_start(cfg, learner, data, samples, step):
        return [{**row, "test_bound": float("nan")} for row in rows(cfg, learner, data, samples, step)]

    monkeypatch.setattr(train_module, "evaluation_rows", nan_at_the_start)
    with pytest.raises(UserError, match=r"^the evaluated bound or log-likelihood is non-finite for the initial model, before any update; "
                                        r"check the model's settings \(model.init_std=0.01, model.decoder=bernoulli\)$"):
        _train(tmp_path, "run", "trainer.max_samples=2e3", data_root=shared_data)
    assert list((tmp_path / "run").iterdir()) == []


def test_a_run_resumed_from_a_checkpoint_between_two_evaluations_logs_what_an_uninterrupted_one_logs(tmp_path, shared_data,
                                                                                                      monkeypatch):
    """Checkpoints every 500 samples, evaluations every 1000 (as SIGTERM's checkpoint at any step also
    gives): killed right after the checkpoint at 2500, then resumed, the run ends as the uninterrupted
    one, the running minibatch bound of its row at 3000 (over steps 21..30) included."""
    _train(tmp_path, "straight", "trainer.max_samples=4e3", "trainer.checkpoint_every=500", data_root=shared_data)
    save = train_module.save_checkpoint

    def save_then_die(run_dir, state):
        path = save(run_dir, state)
        if state["progress"]["samples"] == 2500:
            raise SimulatedKill
        return path

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(SimulatedKill):
        _train(tmp_path, "run", "trainer.max_samples=4e3", "trainer.checkpoint_every=500", data_root=shared_data)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] == 2500 and read_metrics(run)[-1]["samples"] == 2000
    _resume(run)
    assert_same_run(run, tmp_path / "straight")


def test_how_often_a_run_checkpoints_and_reads_its_guard_changes_nothing_it_logs(tmp_path, shared_data, straight_run):
    """trainer.checkpoint_every and trainer.progress_every may change on resume (runs.RESUMABLE_CHANGES), and
    a SIGTERM adds a checkpoint at any step: none of them may change a parameter or a metric."""
    _train(tmp_path, "run", "trainer.max_samples=4e3", "trainer.checkpoint_every=500", "trainer.progress_every=7", data_root=shared_data)
    assert_same_run(tmp_path / "run", straight_run)


class _HalfWritten:
    """A file whose write stores half the bytes and then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_checkpoint_write_failing_half_way_keeps_the_previous_checkpoint(tmp_path, shared_data, monkeypatch):
    """Fault injection inside the real atomic write: the disk fills up during the checkpoint at 2000
    samples (the third: 0, 1000, 2000), after half of it reached the temporary file."""
    real_os, calls = os, {"checkpoints": 0}

    class DiskFullDuringThirdCheckpoint:
        def __getattr__(self, name):
            return getattr(real_os, name)

        def fdopen(self, fd, mode):
            return _HalfWritten(real_os.fdopen(fd, mode)) if calls["checkpoints"] == 3 else real_os.fdopen(fd, mode)

    save = runs.save_checkpoint

    def counting_save(run_dir, state):
        calls["checkpoints"] += 1
        return save(run_dir, state)

    monkeypatch.setattr(runs, "os", DiskFullDuringThirdCheckpoint())
    monkeypatch.setattr(train_module, "save_checkpoint", counting_save)
    with pytest.raises(UserError, match=r"could not write .*last\.pt \(No space left on device\); the previous version is kept"):
        _train(tmp_path, "run", "trainer.max_samples=4e3", data_root=shared_data)
    run = tmp_path / "run"
    assert load_checkpoint(run / CHECKPOINT_FILE)["progress"]["samples"] == 1000  # the previous checkpoint, whole
    assert not list(run.rglob(runs.TEMPORARY_GLOB))


# --- divergence ------------------------------------------------------------------------------------

def _poison_minibatch(monkeypatch, step: int) -> None:
    """Put a NaN into the training minibatch of step `step` (counted from 1)."""
    load, calls = train_module.load_dataset, {"n": 0}

    def poisoned_load(cfg, device):
        data = load(cfg, device)
        minibatch = data.minibatch

        def poisoned(idx, generator):
            calls["n"] += 1
            x = minibatch(idx, generator)
            return torch.where(torch.arange(x.shape[0])[:, None] == 0, float("nan"), x) if calls["n"] == step else x

        data.minibatch = poisoned
        return data

    monkeypatch.setattr(train_module, "load_dataset", poisoned_load)


def _infinite_gradient(monkeypatch, step: int) -> None:
    """Make one gradient infinite at step `step` while every bound stays finite."""
    build, calls = train_module.build_vae, {"n": 0}

    def build_with_hook(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(grad):
            calls["n"] += 1
            return grad + float("inf") if calls["n"] == step else grad

        next(model.parameters()).register_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_vae", build_with_hook)


@pytest.mark.parametrize("fault", [_poison_minibatch, _infinite_gradient], ids=["nan-in-batch", "inf-gradient"])
def test_on_nan_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, shared_data, monkeypatch, fault):
    fault(monkeypatch, step=25)
    with pytest.raises(UserError, match=r"non-finite at step 25 \(2500 samples\); the last good checkpoint .*last\.pt is kept; "
                                        r"lower the stepsize \(optimizer\.lr=0\.02\).* vae-train resume_from=\S+ trainer\.on_nan=skip_batch$"):
        _train(tmp_path, "run", "trainer.max_samples=5e3", data_root=shared_data)
    kept = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert kept["progress"]["samples"] == 2000
    assert all(torch.isfinite(t).all() for t in kept["model"].values())
    assert all(r["samples"] <= 2000 for r in read_metrics(tmp_path / "run"))


def test_on_nan_skip_batch_skips_the_bad_updates_and_counts_them(tmp_path, shared_data, monkeypatch, capsys):
    load = train_module.load_dataset

    def poisoned(cfg, device):  # one bad point: one bad minibatch in each of the 5 epochs
        data = load(cfg, device)
        data.train_eval = data.train.clone()  # the train bound is evaluated on clean data
        data.train[7] = float("nan")
        return data

    monkeypatch.setattr(train_module, "load_dataset", poisoned)
    summary = _train(tmp_path, "run", "trainer.max_samples=5e3", "trainer.on_nan=skip_batch", "trainer.minibatches=epochs",
                     data_root=shared_data)
    assert summary["skipped_steps"] == 5 and summary["samples"] == 5000
    rows = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["model"].values())
    assert "skipped:    5 updates" in capsys.readouterr().out


OPTIMIZERS = [("adagrad", {"eps": 1e-10, "initial_accumulator_value": 1e-8}), ("adam", {"eps": 1e-8, "betas": [0.9, 0.999]}),
              ("sgd", {"momentum": 0.9})]


def _guarded_steps(name: str, extra: dict, via: str, sequence: list[torch.Tensor], skip: bool):
    """Steps of one parameter (4,) with the given gradients, through `ascend` (on an objective whose
    gradient they are) or `apply_gradients` (on gradients put in .grad), each step's flag observed by
    the guard; the parameter, the optimizer's state, the schedule's step count and the guard's report."""
    cfg = SimpleNamespace(name=name, lr=0.1, warmup_steps=1, **extra)  # one warm-up step: the schedule must count good steps only
    p = torch.nn.Parameter(torch.ones(4))
    optimizer, schedule = build_optimizer(cfg, [p], torch.device("cpu"))
    guard = NonFiniteGuard(torch.device("cpu"))
    for grad in sequence:
        if via == "ascend":
            flag = ascend(-(p * grad).sum(), optimizer, schedule, skip)  # ascent: the gradient of -objective is `grad`
        else:
            p.grad = grad.clone()
            flag = apply_gradients(optimizer, schedule, skip)
        guard.observe(torch.zeros(2), flag)
    return p.detach().clone(), optimizer.state_dict()["state"], schedule.last_epoch, guard.collect(len(sequence))


@pytest.mark.parametrize("name,extra", OPTIMIZERS, ids=[name for name, _ in OPTIMIZERS])
@pytest.mark.parametrize("via", ["apply_gradients", "ascend"])
def test_a_skipped_update_leaves_parameters_and_optimizer_state_exactly_as_they_were(name, extra, via):
    """good, bad (first: before any state), good, bad, good under skip == the three good ones alone,
    the warm-up counting good steps only; the guard counts the two bad ones. Without skip the bad update
    is taken (and is flagged all the same)."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, generator=g) for _ in range(3)]
    nan = torch.tensor([1.0, float("nan"), 1.0, 1.0])
    p_skip, state_skip, steps_skip, report = _guarded_steps(name, extra, via, [nan, grads[0], nan, grads[1], grads[2]], skip=True)
    p_ref, state_ref, steps_ref, clean = _guarded_steps(name, extra, via, grads, skip=True)
    assert (report.bad, report.first_bad, report.good) == (2, 1, 3) and (clean.bad, clean.good) == (0, 3)
    assert torch.equal(p_skip, p_ref) and steps_skip == steps_ref == 3
    assert not torch.equal(p_ref, torch.ones(4))  # the good steps past the warm-up moved it
    assert state_skip.keys() == state_ref.keys() == {0}
    assert state_skip[0].keys() == state_ref[0].keys()
    for key, value in state_ref[0].items():
        assert torch.equal(state_skip[0][key], value), key
    assert torch.equal(_guarded_steps(name, extra, via, grads[:1], skip=True)[0], torch.ones(4))  # the warm-up step moves nothing
    p_taken, _, _, taken = _guarded_steps(name, extra, via, [grads[0], nan], skip=False)
    assert not torch.isfinite(p_taken).all() and (taken.bad, taken.first_bad) == (1, 2)


def test_the_guard_reports_the_first_bad_step_and_the_mean_bound_of_the_others_past_its_buffer():
    """Five steps through a buffer of two: step 3 has a NaN bound, step 5 an infinite gradient (the
    flag `apply_gradients` returns: a reduction over the gradients of every parameter it updates)."""
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([p, q], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 1.0)
    guard = NonFiniteGuard(torch.device("cpu"), capacity=2)
    bounds = [torch.tensor([-1.0, -3.0]), torch.tensor([-5.0, -7.0]), torch.tensor([-1.0, float("nan")]),
              torch.tensor([-2.0, -4.0]), torch.tensor([-9.0, -9.0])]
    for i, b in enumerate(bounds):
        p.grad, q.grad = torch.ones(3), torch.tensor([1.0, float("inf") if i == 4 else 1.0])
        guard.observe(b, apply_gradients(optimizer, schedule, skip_nonfinite=False))
    report = guard.collect(step=15)  # steps 11..15
    assert (report.bad, report.first_bad, report.good) == (2, 13, 3)
    assert report.mean_bound == pytest.approx((-1 - 3 - 5 - 7 - 2 - 4) / 6)
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    guard.observe(torch.tensor([-0.5, -1.5]), apply_gradients(optimizer, schedule, skip_nonfinite=False))
    assert guard.collect(step=16) == StepsReport(0, None, -1.0, 1)  # the buffers start again empty


def test_a_ctrl_c_swallowed_where_python_ignores_exceptions_is_raised_again_at_the_next_batch():
    """vae-eval's batches: a KeyboardInterrupt raised inside a finalizer or callback is lost to Python,
    so the estimate would run on for minutes; the next batch boundary raises it again."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    with InterruptCheck() as interrupt:
        interrupt.check()  # nothing seen yet: no error
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass  # swallowed, as Python does in a finalizer
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert signal.getsignal(signal.SIGINT) is not interrupt._handle
