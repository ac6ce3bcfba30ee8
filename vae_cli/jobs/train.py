"""The `vae-train` job: `train(cfg, run_dir) -> dict` sets up one run and drives `loop.train_loop`.

It loads the data, builds the model (a stack of K with `speed.n_models=K`, `accel/stack.py`) and the
method, claims the run folder or resumes the run in it (`trainer.on_existing=resume`, or `vae-train
resume_from=DIR`), and gives the loop its hooks: evaluations of the bound (or App. D log p(x)) on train
and test data, written as rows of metrics.jsonl; checkpoints that refuse to save a diverged model; the
one-line report of a divergence. At the end it draws the run's figures and returns a summary.

What it prints says where the run is and what it is doing: the run folder first, where a resumed
run continues from, a notice on the bar while the loop evaluates or compiles, and at the end the
files written (and the TensorBoard folder and MLflow run). A sweep's job labels its lines and bar
with its folder's name. One vae-train at a time trains in a folder (`locks.RunLock`); a new run that
fails before its first step removes the files it wrote, so the same command can run again.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from tqdm import tqdm

from .. import loggers
from ..accel.compiled import compiled_steps
from ..accel.stack import StackLearner
from ..config import to_container, validate
from ..data import MinibatchSampler, load_dataset
from ..errors import RunStopped, UserError
from ..evaluation import evaluate_loglik
from ..figures import figure_paths, save_run_figures
from ..generators import evaluation_generator, init_generator, training_generators
from ..learner import Learner
from ..loop import Hooks, Progress, evaluation_points, train_loop
from ..methods import METHODS
from ..models import build_vae
from ..optim import NonFiniteGuard
from ..runs import (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MetricsLog, RunLock, config_differences, flatten, holds_run,
                    load_checkpoint, save_checkpoint, save_config, start_run_dir)
from ..signals import GracefulStop
from . import cpu_threads, select_device
from .console import Console, announce_compilation, bar_notice, evaluation_notice, report_files

BOUND_FIELDS = ("estimator", "n_samples", "train_bound", "train_bound_se", "train_points", "test_bound", "test_bound_se", "test_points")
LOGLIK_FIELDS = ("loglik_estimator", "loglik_points", "train_loglik", "train_loglik_se", "test_loglik", "test_loglik_se")


def build_learner(cfg, data, device: torch.device):
    """The model, its method, sampler and random streams; compiled or stacked as `speed` asks."""
    if cfg.speed.n_models > 1:
        return StackLearner(cfg, data, device)
    generators = training_generators(cfg.seed, device)
    model = build_vae(data.data_dim, cfg.model, init_generator(cfg.seed)).to(device)
    method = METHODS[cfg.method.name].build(cfg, model, data.n_train, device, generators["chains"])
    sampler = MinibatchSampler(data.n_train, cfg.trainer.batch_size, cfg.trainer.minibatches == "with_replacement")
    learner = Learner(method, data, sampler, generators)
    if cfg.speed.compile:
        learner.step_fn = compiled_steps(method)
    return learner


def evaluation_rows(cfg, learner, data, samples: int, step: int) -> list[dict]:
    """One metrics row per model (a stack: with its `model` index and `seed`), each holding the same
    keys: the lower bound of train and test data (null without a q(z|x)) and the App. D log p(x) on
    the first `evaluation.loglik_points` points (null unless asked for, or without a q(z|x)).
    Deterministic given the seed and `samples`: a resumed run evaluates identically."""
    e, rows, members = cfg.evaluation, [], learner.members()
    has_bound = learner.capabilities.bound
    splits = (("train", data.train_eval, e.train_points), ("test", data.test, e.test_points))
    for member in members:
        seed = cfg.seed + member.offset
        generator = evaluation_generator(data.test.device, seed, samples)
        row = {"samples": samples, "step": step, "epoch": samples / data.n_train, "method": cfg.method.name}
        if len(members) > 1:
            row.update(model=member.offset, seed=seed)
        row.update(dict.fromkeys(BOUND_FIELDS + LOGLIK_FIELDS))
        if has_bound:
            row.update(estimator=e.estimator.value, n_samples=e.n_samples, **member.fields())
            for split, x, n_points in splits:
                bound = member.bound(x[:n_points], e.estimator, e.n_samples, e.batch_size, generator)
                row.update({f"{split}_bound": bound.mean, f"{split}_bound_se": bound.std_err, f"{split}_points": bound.n_points})
        if e.loglik or not has_bound:
            row.update(loglik_estimator="appendix_d")
            for split, x, _ in splits:
                loglik = evaluate_loglik(member.model, x[: e.loglik_points], e.batch_size, generator)
                row.update({f"{split}_loglik": loglik.mean, f"{split}_loglik_se": loglik.std_err, "loglik_points": loglik.n_points})
        rows.append(row)
    return rows


def diverged(what: str, step: int, batch_size: int, cfg, run_dir: Path) -> UserError:
    """The one-line report of a divergence: where, what is kept, and the fixes."""
    if step == 0:  # the model as initialised: nothing to resume from
        return UserError(f"{what} is non-finite for the initial model, before any update; check the model's settings "
                         f"(model.init_std={cfg.model.init_std}, model.decoder={getattr(cfg.model.decoder, 'value', cfg.model.decoder)})")
    return UserError(
        f"{what} became non-finite at step {step} ({step * batch_size} samples); the last good checkpoint {run_dir / CHECKPOINT_FILE} "
        f"is kept; lower the stepsize (optimizer.lr={cfg.optimizer.lr}) and start again, or skip such minibatches from "
        f"the checkpoint with: vae-train resume_from={shlex.quote(str(run_dir))} trainer.on_nan=skip_batch")


def checkpoint(run_dir: Path, cfg, learner, progress: Progress) -> Path:
    """checkpoints/last.pt with everything needed to continue exactly; never of a diverged model."""
    state = learner.state_dict()
    tensors = [*state["model"].values(), *flatten(state["method"]).values()]
    if not all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()):
        raise diverged("a parameter", progress.step, learner.batch_size, cfg, run_dir)
    progress_state = dataclasses.asdict(progress)
    return save_checkpoint(run_dir, {"config": to_container(cfg), **state, "progress": progress_state})


def restore(run_dir: Path, cfg, learner, progress: Progress, device: torch.device) -> None:
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, map_location=device)
    saved, requested = flatten(state.get("config") or {}), flatten(to_container(cfg))
    diff = config_differences(saved, requested)
    if diff:
        raise UserError(f"{path} was written by a run with {diff[0]}={saved.get(diff[0])!r}, not {requested.get(diff[0])!r} as "
                        f"{run_dir / CONFIG_FILE} says; put back this run's own checkpoint or start a new hydra.run.dir=")
    try:
        learner.load_state_dict(state)
        for k, v in state["progress"].items():
            setattr(progress, k, v)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        reason = " ".join(str(e).replace("Error(s) in loading state_dict for VAE:", "").split())[:240] or type(e).__name__
        raise UserError(f"{path} does not fit the requested model ({reason}); put back this run's own checkpoint or start a new hydra.run.dir=") from None


def train(cfg, run_dir: str | Path | None = None, sweep_dir: str | Path | None = None) -> dict:
    """Run one training job as configured; return a summary (folder, counters, last bounds).

    SIGINT or SIGTERM saves a checkpoint at the next step boundary and raises RunStopped (a second one
    exits at once). A non-finite bound or gradient stops the run, keeping the last good checkpoint
    (`trainer.on_nan=stop`), or skips that update (`trainer.on_nan=skip_batch`). `sweep_dir`: the
    folder of the sweep the run is a job of (its MLflow parent run; its lines are labelled)."""
    validate(cfg)
    loggers.require(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        run_dir = hydra.runtime.output_dir
        sweep_dir = hydra.sweep.dir if hydra.mode == RunMode.MULTIRUN else None
    run_dir = Path(run_dir)
    say = Console(f"[{run_dir.name}] " if sweep_dir is not None else "")
    say(f"run folder: {run_dir}")
    with (GracefulStop("vae-train: second {signal}: stopped at once, before the run folder was claimed") as stop,
          RunLock(run_dir) as lock, cpu_threads(cfg.speed.threads, cfg.speed.flush_denormals)):
        return _train(cfg, run_dir, None if sweep_dir is None else Path(sweep_dir), stop, lock, say)


def _train(cfg, run_dir: Path, sweep_dir: Path | None, stop: GracefulStop, lock: RunLock, say: Console) -> dict:
    t = cfg.trainer
    device = select_device(cfg.device)
    data = load_dataset(cfg.dataset, device)
    if t.batch_size > data.n_train:
        raise UserError(f"trainer.batch_size={t.batch_size} exceeds the {data.n_train} training points; use a smaller batch")
    learner = build_learner(cfg, data, device)
    max_samples = int(t.max_samples)
    if stop.requested:
        raise RunStopped(f"{stop.signal_name} before the run folder was claimed: nothing was written", stop.exit_code)
    resume = t.on_existing == "resume" and holds_run(run_dir)  # a relaunched sweep continues
    new_files = [] if resume else [run_dir / f for f in (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, "tb", loggers.MLFLOW_FILE)
                                   if not (run_dir / f).exists()]
    start_run_dir(run_dir, to_container(cfg), resume, lock)
    progress, metrics = Progress(), MetricsLog(run_dir)
    with removed_unless_trained(new_files, progress):
        if resume and (run_dir / CHECKPOINT_FILE).is_file():  # else killed before the checkpoint at sample 0
            restore(run_dir, cfg, learner, progress, device)
            if progress.samples > max_samples:
                raise UserError(f"trainer.max_samples={max_samples} is below the {progress.samples} samples {run_dir} has trained; "
                                f"set trainer.max_samples= to at least {progress.samples}")
            metrics.resume(progress.samples)  # rows past the checkpoint are recomputed, identically
            if progress.samples >= max_samples and metrics.rows and metrics.rows[-1]["samples"] >= max_samples:
                return _finished(run_dir, cfg, learner, data, progress, metrics, say)
            save_config(run_dir, to_container(cfg))  # with this resumption's budget, device, ...
            say(f"resuming {run_dir} from its checkpoint at {progress.samples} samples")
        elif resume:
            say(f"resuming {run_dir}: it stopped before its first checkpoint, so it starts again at sample 0")
        if not (run_dir / CHECKPOINT_FILE).is_file():
            checkpoint(run_dir, cfg, learner, progress)  # at sample 0, so that any later kill can resume
        return _train_loop(cfg, run_dir, sweep_dir, stop, say, learner, data, progress, metrics)


@contextmanager
def removed_unless_trained(new_files: list[Path], progress: Progress) -> Iterator[None]:
    """A new run that fails before its first step (a compile failure, an unreachable MLflow store)
    removes the files it wrote (`new_files`, those absent before it claimed the folder), so the same
    command can run again; a run that trained, or was stopped by a signal, keeps them."""
    try:
        yield
    except RunStopped:
        raise
    except Exception:
        if progress.step == 0:
            for path in new_files:
                with suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            if new_files:
                with suppress(OSError):
                    (new_files[0].parent / CHECKPOINT_FILE.parent).rmdir()  # only if empty
        raise


def _train_loop(cfg, run_dir: Path, sweep_dir: Path | None, stop: GracefulStop, say: Console, learner, data, progress: Progress,
                metrics: MetricsLog) -> dict:
    """The claimed run from its checkpoint to the end: the loop with its hooks, then figures and the summary."""
    t, e, max_samples = cfg.trainer, cfg.evaluation, int(cfg.trainer.max_samples)
    schedule = [s for s in evaluation_points(e.schedule, e.per_decade, e.first, e.every, t.batch_size, max_samples)
                if not metrics.rows or s > metrics.rows[-1]["samples"]]
    sinks = loggers.open_loggers(cfg, to_container(cfg), run_dir, progress.samples, sweep_dir)
    resume_command = f"vae-train resume_from={shlex.quote(str(run_dir))}"
    stop.at_once_message = f"vae-train: second {{signal}}: stopped at once; the last checkpoint is kept; resume with: {resume_command}"
    last = [time.perf_counter(), progress.samples]  # the previous evaluation: its time and sample count
    notice = evaluation_notice(cfg, learner)

    def evaluate(progress: Progress, running: float | None, wall) -> None:
        with bar_notice(bar, f"{notice} at {progress.samples} samples"):  # the bar stands still meanwhile
            rows = evaluation_rows(cfg, learner, data, progress.samples, progress.step)
        now = time.perf_counter()
        speed = round((progress.samples - last[1]) / max(now - last[0], 1e-9), 1)  # a stack's: of each model
        for row in rows:
            if running is not None and learner.capabilities.bound and len(rows) == 1:
                row["train_bound_running"] = running  # the minibatch bounds since the last evaluation ([K]'s train curve)
            if learner.skip_nonfinite:
                row["skipped_steps"] = progress.skipped
            row.update(wall_seconds=round(wall(), 3), samples_per_second=speed)
            curves = {k: row[k] for k in loggers.CURVES if row.get(k) is not None}
            if not math.isfinite(sum(curves.values())):
                raise diverged("the evaluated bound or log-likelihood", progress.step, t.batch_size, cfg, run_dir)
            member = "" if row.get("model") is None else f"model {row['model']}  "
            say(f"samples {progress.samples:>11,}  {member}" + "  ".join(f"{k} {v:9.2f}" for k, v in curves.items()))
        metrics.extend(rows)  # one write: a stack's K rows of one evaluation land together
        for sink in sinks:
            sink.log(rows)
        last[:] = [now, progress.samples]

    regular = set(evaluation_points(e.schedule, e.per_decade, e.first, e.every, t.batch_size, 10 * max_samples))  # not the last
    hooks = Hooks(evaluate, lambda p: checkpoint(run_dir, cfg, learner, p),
                  lambda step: diverged("the bound or a gradient", step, t.batch_size, cfg, run_dir), schedule, regular)
    bar = tqdm(total=max_samples, initial=progress.samples, unit="dp", unit_scale=True, dynamic_ncols=True, disable=not t.progress,
               desc=f"{say.label}{cfg.method.name} {data.name} Nz={cfg.model.latent_dim}")
    if cfg.speed.compile:
        announce_compilation(learner, bar, say)
    with bar:  # closed on any way out, so a last message starts on a line of its own
        guard = NonFiniteGuard(data.test.device, running=(progress.running_sum, progress.running_steps))
        train_loop(learner, progress, max_samples, int(t.checkpoint_every), hooks, guard, bar, stop,
                   t.progress_every, resume_command)
    saved = checkpoint(run_dir, cfg, learner, progress)
    figures = save_figures(run_dir, cfg, learner, data) if t.figures else []
    for sink in sinks:
        sink.close([(run_dir / CONFIG_FILE, None), (metrics.path, None), (saved, "checkpoints"), *((f, "figures") for f in figures)])
    report_files(say, cfg, run_dir, metrics.path, saved, figures, progress.skipped)
    return summary(run_dir, progress, metrics, saved)


def _finished(run_dir: Path, cfg, learner, data, progress: Progress, metrics: MetricsLog, say: Console) -> dict:
    """A run resumed at its end: draw its figures if a kill came between the last checkpoint and them."""
    if cfg.trainer.figures and not all(p.is_file() for p in figure_paths(run_dir / "figures", learner.capabilities.bound)):
        save_figures(run_dir, cfg, learner, data)
        say(f"{run_dir}: finished already ({progress.samples} samples); wrote its missing figures")
    else:
        say(f"{run_dir}: finished already ({progress.samples} samples), nothing to do")
    return summary(run_dir, progress, metrics, run_dir / CHECKPOINT_FILE)


def save_figures(run_dir: Path, cfg, learner, data) -> list[Path]:
    """The trained model's figures (a stack: model 0's), from a generator of the seed alone."""
    model = learner.members()[0].model
    return save_run_figures(model, data, run_dir / "figures", evaluation_generator(data.test.device, cfg.seed, -1),
                            reconstructions=learner.capabilities.bound)


def summary(run_dir: Path, progress: Progress, metrics: MetricsLog, saved: Path) -> dict:
    """What `train` returns: the folder, the counters and the last evaluation's curves (a stack's:
    the mean over its models)."""
    last = [r for r in metrics.rows if r["samples"] == metrics.rows[-1]["samples"]]
    mean = lambda k: None if last[0].get(k) is None else sum(r[k] for r in last) / len(last)  # noqa: E731
    return {"run_dir": str(run_dir), "samples": progress.samples, "step": progress.step, **{k: mean(k) for k in loggers.CURVES},
            "skipped_steps": progress.skipped, "wall_seconds": progress.wall_seconds, "metrics": str(metrics.path), "checkpoint": str(saved)}
