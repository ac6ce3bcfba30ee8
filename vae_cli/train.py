"""The training loop, written like Algorithm 1 (minibatch AEVB) and shared by every method.

repeat: draw a minibatch X^M (index slices of a per-epoch permutation of the training set), let the
method (AEVB, wake-sleep, MCEM or full VB) update the parameters on it, count M more "training
samples evaluated" (Figs. 2-3's x-axis); at log-spaced (or evenly spaced) sample counts evaluate the
lower bound (methods with a q(z|x)) and, with `trainer.track_loglik` or for MCEM, the App. D estimate
of log p(x) on train and test data, and append a row to metrics.jsonl; every
`trainer.checkpoint_every` samples save everything needed to continue exactly. With
`trainer.n_models=K` the loop trains a stack of K models at once (`stacked.py`), model k exactly as a
separate run with `seed=s+k`, and writes K rows per evaluation, with their `model` and `seed`.
`train(cfg, run_dir) -> dict` is the whole job; the console script wraps it.

Around that: a run resumed from its checkpoint continues exactly (`trainer.resume=true`); SIGINT and
SIGTERM save a checkpoint at the next step boundary and stop (`signals.GracefulStop`); every update
is watched for a non-finite bound or gradient on the device (`optimizers.NonFiniteGuard`), and no
checkpoint of non-finite parameters is ever written.
"""

from __future__ import annotations

import functools
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import aevb, full_vb, mcem, stacked, wake_sleep
from .config import to_container, validate
from .data import Dataset, load_dataset
from .errors import RunStopped, UserError
from .evaluate import evaluate_bound, evaluate_loglik, evaluation_generator
from .figures import figure_paths, save_run_figures
from .generators import Generator, randperm, training_generators
from .models import build_vae
from .optimizers import NonFiniteGuard
from .runs import (CHECKPOINT_FILE, CONFIG_FILE, MetricsLog, config_differences, flatten, holds_run, load_checkpoint,
                   save_checkpoint, save_config, start_run_dir)
from .signals import GracefulStop

METHODS = {"aevb": aevb.build, "wake_sleep": wake_sleep.build, "mcem": mcem.build, "full_vb": full_vb.build}
BOUND_FIELDS = ("estimator", "n_samples", "train_bound", "train_bound_se", "train_points", "test_bound", "test_bound_se", "test_points")
LOGLIK_FIELDS = ("loglik_estimator", "loglik_points", "train_loglik", "train_loglik_se", "test_loglik", "test_loglik_se")


@dataclass
class Progress:
    """Where the loop is: the counters and the data order, all of it checkpointed."""

    step: int = 0
    samples: int = 0  # training samples evaluated = steps x M
    epoch: int = 0  # permutations started
    position: int = 0  # next index into `permutation`
    permutation: torch.Tensor | None = None  # this epoch's order of the training set (on device)
    wall_seconds: float = 0.0  # training and evaluation time, summed over resumptions
    skipped: int = 0  # updates skipped for a non-finite bound or gradient (trainer.on_nan=skip_batch)


def training_step(method, data: Dataset, progress: Progress, generators: dict[str, Generator], batch_size: int,
                  guard: NonFiniteGuard) -> None:
    """One update of Algorithm 1 as the loop takes it (and `benchmarks/train_throughput.py` times it):
    draw X^M, let the method update on it, hand its bounds to the divergence guard."""
    idx = next_minibatch(progress, data, batch_size, generators["data"])
    x = data.minibatch(idx, generators["noise"])
    bounds = method.step(x, idx, generators["noise"])
    guard.observe(bounds, getattr(method, "nonfinite_gradient", None))
    progress.step += 1
    progress.samples += batch_size


def configure_cpu(threads: int | None, flush_denormals: bool) -> None:
    """torch's intra-op threads (`threads`; None keeps torch's default), and whether the CPU reads and
    writes subnormal floats (|v| < 1.2e-38 in float32) as 0 (x86's FTZ and DAZ flags).

    The weight prior p(theta) pulls the weights of pixels that are never lit (MNIST's border) toward 0,
    into the subnormal range; some x86 cores compute on subnormals through a slow microcode path, which
    made Adagrad's step 3x slower and the whole training step 1.3x slower on an Intel Xeon (an AMD EPYC
    showed no cost; README, Choices). Flushing
    changes no bound: those weights multiply pixels that are 0, and a subnormal is 1e-38 next to
    the O(1) terms it would be added to. Worker threads take the flags when they start, so this must run
    before torch's first parallel operation, as vae-train and vae-eval call it; in a process whose
    threads have started (a test that trained before) it changes the calling thread only. The flags
    stay set after the run: in that process a subnormal then reads as 0 in float comparisons too.
    """
    torch.set_flush_denormal(flush_denormals)
    if threads:
        torch.set_num_threads(threads)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible to torch; use device=cpu or device=auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluation_points(trainer, batch_size: int, max_samples: int) -> list[int]:
    """Sample counts at which to evaluate: 0, then log- or evenly spaced, then the end."""
    if trainer.eval_schedule == "log":
        n = int(math.ceil(trainer.eval_per_decade * math.log10(max_samples / trainer.eval_first))) + 1
        raw = [trainer.eval_first * 10 ** (k / trainer.eval_per_decade) for k in range(max(n, 0))]
    else:
        raw = [trainer.eval_every * k for k in range(1, int(max_samples // trainer.eval_every) + 1)]
    on_steps = {int(math.ceil(s / batch_size)) * batch_size for s in raw}  # evaluations fall on step boundaries
    return sorted({0, *(s for s in on_steps if s < max_samples), max_samples})


def next_minibatch(progress: Progress, data: Dataset, batch_size: int, generator: Generator) -> torch.Tensor:
    """Indices of X^M: consecutive slices of a seeded permutation, a new one each epoch (PAPER.md §10.8).

    The last partial batch of an epoch is dropped, so every step has exactly M datapoints. A stack of
    K models (a `GeneratorStack`) has K permutations, (K, N), and gets (K, M) indices.
    """
    if progress.permutation is None or progress.position + batch_size > data.n_train:
        progress.permutation = randperm(data.n_train, generator).to(data.train.device)
        progress.position = 0
        progress.epoch += 1
    idx = progress.permutation[..., progress.position : progress.position + batch_size]
    progress.position += batch_size
    return idx


def evaluate(cfg, method, data: Dataset, samples: int, model=None, seed: int | None = None) -> dict:
    """The evaluation fields of one metrics row (same function for both sets, every method).

    Every row holds the same keys: the lower bound (null for a method without q(z|x), i.e. MCEM) and
    the App. D log-likelihood on the first `trainer.loglik_points` points (null unless
    `trainer.track_loglik` or the method has no q(z|x)). The bound is `evaluate_bound` of
    `method.model`, unless the method evaluates it itself and says how in extra fields of the row
    (full VB: theta at q(theta)'s mean or averaged over draws). Deterministic given seed and `samples`.
    `model` and `seed` (default `method.model`, `cfg.seed`) evaluate model k of a stack as its own run.
    """
    t = cfg.trainer
    model = method.model if model is None else model
    generator = evaluation_generator(data.test.device, cfg.seed if seed is None else seed, samples)
    row = dict.fromkeys(BOUND_FIELDS + LOGLIK_FIELDS)
    splits = (("train", data.train_eval, t.eval_train_points), ("test", data.test, t.eval_test_points))
    if method.has_encoder:
        bound_of = getattr(method, "evaluate_bound", functools.partial(evaluate_bound, model))
        row.update(estimator=t.eval_estimator, n_samples=t.eval_n_samples)
        row.update(method.evaluation_fields() if hasattr(method, "evaluation_fields") else {})
        for split, x, n_points in splits:
            bound = bound_of(x[:n_points], t.eval_estimator, t.eval_n_samples, t.eval_batch_size, generator)
            row.update({f"{split}_bound": bound.mean, f"{split}_bound_se": bound.std_err, f"{split}_points": bound.n_points})
    if t.track_loglik or not method.has_encoder:
        row.update(loglik_estimator="appendix_d")
        for split, x, _ in splits:
            loglik = evaluate_loglik(model, x[: t.loglik_points], t.eval_batch_size, generator)
            row.update({f"{split}_loglik": loglik.mean, f"{split}_loglik_se": loglik.std_err, "loglik_points": loglik.n_points})
    return row


def evaluation_rows(cfg, method, data: Dataset, progress: Progress, members) -> list[dict]:
    """The metrics rows of one evaluation: one for a single model; for a stack one per model k, with
    its `model` index and `seed` s + k, each evaluated as that model's separate run evaluates it."""
    head = {"samples": progress.samples, "step": progress.step, "epoch": progress.samples / data.n_train, "method": cfg.method.name}
    if members is None:
        return [{**head, **evaluate(cfg, method, data, progress.samples)}]
    return [{**head, "model": k, "seed": cfg.seed + k, **evaluate(cfg, method, data, progress.samples, member, cfg.seed + k)}
            for k, member in enumerate(stacked.load_members(method.model, members))]


def curve_values(row: dict) -> dict:
    """The curves of a metrics row that were evaluated: bound and log-likelihood, train and test."""
    keys = ("train_bound", "test_bound", "train_loglik", "test_loglik")
    return {k: row[k] for k in keys if row.get(k) is not None}


def _diverged(what: str, step: int, samples: int, cfg, run_dir: Path) -> UserError:
    """The one-line report of a divergence: where, what is kept, and the fixes."""
    return UserError(
        f"{what} became non-finite at step {step} ({samples} samples); the last good checkpoint {run_dir / CHECKPOINT_FILE} "
        f"is kept; lower the stepsize (optimizer.lr={cfg.optimizer.lr}) and start again, or skip such minibatches from "
        f"the checkpoint with: vae-train resume_from={shlex.quote(str(run_dir))} trainer.on_nan=skip_batch"
    )


def _checkpoint(run_dir: Path, cfg, model, method, progress: Progress, generators: dict) -> Path:
    model_state, method_state = model.state_dict(), method.state_dict()
    tensors = [*model_state.values(), *flatten(method_state).values()]
    if not all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point()):
        raise _diverged("a parameter", progress.step, progress.samples, cfg, run_dir)  # never save a diverged model
    return save_checkpoint(run_dir, {
        "config": to_container(cfg),
        "model": model_state,
        "method": method_state,
        "rng": {name: g.get_state() for name, g in generators.items()},
        "progress": {k: getattr(progress, k) for k in ("step", "samples", "epoch", "position", "wall_seconds", "skipped")},
        "permutation": None if progress.permutation is None else progress.permutation.cpu(),
    })


def _restore(run_dir: Path, cfg, model, method, progress: Progress, generators: dict, device: torch.device) -> None:
    path = run_dir / CHECKPOINT_FILE
    state = load_checkpoint(path, map_location=device)
    saved, requested = flatten(state.get("config") or {}), flatten(to_container(cfg))
    diff = config_differences(saved, requested)
    if diff:
        raise UserError(f"{path} was written by a run with {diff[0]}={saved.get(diff[0])!r}, not {requested.get(diff[0])!r} as "
                        f"{run_dir / CONFIG_FILE} says; put back this run's own checkpoint or start a new hydra.run.dir=")
    try:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        for name, g in generators.items():
            g.set_state(state["rng"][name].cpu())
        for k, v in state["progress"].items():
            setattr(progress, k, v)
        if state["permutation"] is not None:
            progress.permutation = state["permutation"].to(device)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        reason = " ".join(str(e).replace("Error(s) in loading state_dict for VAE:", "").split())[:240] or type(e).__name__
        raise UserError(f"{path} does not fit the requested model ({reason}); put back this run's own checkpoint or start a new hydra.run.dir=") from None


def optimizers_of(method) -> list[torch.optim.Optimizer]:
    """The optimizers a training method holds as attributes (what the divergence guard watches)."""
    return [v for v in vars(method).values() if isinstance(v, torch.optim.Optimizer)]


def _tensorboard(cfg, run_dir: Path, samples: int):
    if cfg.logger.name != "tensorboard":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError('logger=tensorboard needs the tensorboard package; pip install "vae-cli[tensorboard]" or use logger=jsonl') from None
    return SummaryWriter(str(run_dir / "tb"), purge_step=samples or None)


def train(cfg, run_dir: str | Path | None = None) -> dict:
    """Run one training job as configured; return a summary (folder, counters, last bounds).

    SIGINT or SIGTERM saves a checkpoint at the next step boundary and raises RunStopped (a second
    one exits at once). A non-finite bound or gradient stops the run, keeping the last good
    checkpoint (`trainer.on_nan=stop`), or skips that update (`trainer.on_nan=skip_batch`).
    """
    validate(cfg)
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    with GracefulStop("vae-train: second {signal}: stopped at once, before the run folder was claimed") as stop:
        return _train(cfg, Path(run_dir), stop)


def _train(cfg, run_dir: Path, stop: GracefulStop) -> dict:
    t = cfg.trainer
    configure_cpu(t.threads, t.flush_denormals)
    device = select_device(cfg.device)
    data = load_dataset(cfg.dataset, device)
    if t.batch_size > data.n_train:
        raise UserError(f"trainer.batch_size={t.batch_size} exceeds the {data.n_train} training points; use a smaller batch")
    model, members = stacked.build_models(  # members: the K plain models of a stack (trainer.n_models), else None
        lambda init_generator: build_vae(data.data_dim, cfg.model.latent_dim, list(cfg.model.hidden), cfg.model.decoder,
                                         cfg.model.init_std, init_generator, cfg.model.decoder_min_log_var).to(device),
        cfg.seed, t.n_models)
    method = METHODS[cfg.method.name](cfg, model, data.n_train, device)
    generators = training_generators(cfg.seed, t.n_models, device)
    max_samples, batch_size = int(t.max_samples), t.batch_size
    if stop.requested:
        raise RunStopped(f"{stop.signal_name} before the run folder was claimed: nothing was written", stop.exit_code)
    resume = t.resume or (t.on_existing == "continue" and holds_run(run_dir))  # a relaunched sweep continues
    start_run_dir(run_dir, to_container(cfg), resume)
    progress, metrics = Progress(), MetricsLog(run_dir)
    if resume and (run_dir / CHECKPOINT_FILE).is_file():  # else killed before the checkpoint at sample 0
        _restore(run_dir, cfg, model, method, progress, generators, device)
        if progress.samples > max_samples:
            raise UserError(f"trainer.max_samples={max_samples} is below the {progress.samples} samples {run_dir} has trained; "
                            f"set trainer.max_samples= to at least {progress.samples}")
        metrics.resume(progress.samples)  # rows past the checkpoint are recomputed, identically
        if progress.samples >= max_samples and metrics.rows and metrics.rows[-1]["samples"] >= max_samples:
            if t.figures and not all(p.is_file() for p in figure_paths(run_dir / "figures", method.has_encoder)):
                _save_figures(run_dir, cfg, method, members, data, device)  # killed after its last checkpoint, before them
                print(f"{run_dir}: finished already ({progress.samples} samples); wrote its missing figures")
            else:
                print(f"{run_dir}: finished already ({progress.samples} samples), nothing to do")
            return _summary(run_dir, progress, metrics, run_dir / CHECKPOINT_FILE)
    if resume:
        save_config(run_dir, to_container(cfg))  # with this resumption's budget, device, ...
    if not (run_dir / CHECKPOINT_FILE).is_file():
        _checkpoint(run_dir, cfg, model, method, progress, generators)  # at sample 0, so that any later kill can resume
    schedule = [s for s in evaluation_points(t, batch_size, max_samples) if not metrics.rows or s > metrics.rows[-1]["samples"]]
    next_checkpoint = (progress.samples // int(t.checkpoint_every) + 1) * int(t.checkpoint_every)
    tb = _tensorboard(cfg, run_dir, progress.samples)
    guard = NonFiniteGuard(optimizers_of(method), skip=t.on_nan == "skip_batch", device=device)
    resume_command = f"vae-train resume_from={shlex.quote(str(run_dir))}"
    stop.at_once_message = f"vae-train: second {{signal}}: stopped at once; the last checkpoint is kept; resume with: {resume_command}"

    bar = tqdm(total=max_samples, initial=progress.samples, unit="dp", unit_scale=True, dynamic_ncols=True,
               disable=not t.progress, desc=f"{cfg.method.name} {data.name} Nz={cfg.model.latent_dim}")
    clock, last_eval = time.perf_counter(), (time.perf_counter(), progress.samples)

    def refresh() -> None:  # one host sync per `progress_every` steps
        steps = guard.collect(progress.step)
        if steps.bad and not guard.skip:
            raise _diverged("the bound or a gradient", steps.first_bad, steps.first_bad * batch_size, cfg, run_dir)
        progress.skipped += steps.bad
        if steps.mean_bound is not None:
            bar.set_postfix({"bound" if method.has_encoder else "log p(x,z)": f"{steps.mean_bound:.2f}"}, refresh=False)
        bar.update(progress.samples - bar.n)

    def wall() -> float:
        return progress.wall_seconds + time.perf_counter() - clock

    with bar:  # closed on any way out, so a last message starts on a line of its own
        while True:
            if schedule and progress.samples >= schedule[0]:
                refresh()
                rows = evaluation_rows(cfg, method, data, progress, members)
                now = time.perf_counter()
                timing = {"wall_seconds": round(wall(), 3),  # a stack's: samples per second of each of its models
                          "samples_per_second": round((progress.samples - last_eval[1]) / max(now - last_eval[0], 1e-9), 1)}
                for row in rows:
                    if guard.skip:
                        row["skipped_steps"] = progress.skipped
                    row.update(timing)
                    curves = curve_values(row)
                    if not math.isfinite(sum(curves.values())):
                        raise _diverged("the evaluated bound or log-likelihood", progress.step, progress.samples, cfg, run_dir)
                    stack_member = row.get("model")  # None for one model
                    if tb:
                        for k, v in curves.items():
                            split, kind = k.split("_")
                            tb.add_scalar(f"{kind}/{split}" + ("" if stack_member is None else f"/model_{stack_member}"), v, progress.samples)
                    of_model = "" if stack_member is None else f"model {stack_member}  "
                    bar.write(f"samples {progress.samples:>11,}  {of_model}" + "  ".join(f"{k} {v:9.2f}" for k, v in curves.items()))
                metrics.extend(rows)  # one write: the K rows of a stack's evaluation land together
                last_eval = (now, progress.samples)
                schedule.pop(0)
            if progress.samples >= max_samples:
                break
            if progress.samples >= next_checkpoint or stop.requested:
                refresh()
                progress.wall_seconds, clock = wall(), time.perf_counter()
                checkpoint = _checkpoint(run_dir, cfg, model, method, progress, generators)
                next_checkpoint = (progress.samples // int(t.checkpoint_every) + 1) * int(t.checkpoint_every)
                if stop.requested:
                    raise RunStopped(f"{stop.signal_name}: saved a checkpoint at step {progress.step} ({progress.samples} samples) "
                                     f"in {checkpoint}; resume with: {resume_command}", stop.exit_code)
            training_step(method, data, progress, generators, batch_size, guard)
            if progress.step % t.progress_every == 0:
                refresh()
        refresh()
    progress.wall_seconds, clock = wall(), time.perf_counter()
    checkpoint = _checkpoint(run_dir, cfg, model, method, progress, generators)
    if tb:
        tb.close()
    figures = _save_figures(run_dir, cfg, method, members, data, device) if t.figures else []
    print(f"metrics:    {metrics.path}\ncheckpoint: {checkpoint}")
    if figures:
        print(f"figures:    {figures[0].parent}/ ({', '.join(f.name for f in figures)})")
    if progress.skipped:
        print(f"skipped:    {progress.skipped} updates with a non-finite bound or gradient (trainer.on_nan=skip_batch)")
    return _summary(run_dir, progress, metrics, checkpoint)


def _save_figures(run_dir: Path, cfg, method, members, data: Dataset, device: torch.device) -> list[Path]:
    """The trained model's figures (a stack: model 0's), from a generator of the seed alone."""
    drawn = method.model if members is None else stacked.load_members(method.model, members)[0]
    return save_run_figures(drawn, data, run_dir / "figures", evaluation_generator(device, cfg.seed, -1),
                            reconstructions=method.has_encoder)


def _summary(run_dir: Path, progress: Progress, metrics: MetricsLog, checkpoint: Path) -> dict:
    """What `train` returns: the folder, the counters and the last evaluation's curves (a stack's: the
    mean over its models)."""
    last = [r for r in metrics.rows if r["samples"] == metrics.rows[-1]["samples"]]
    mean = lambda k: None if last[0].get(k) is None else sum(r[k] for r in last) / len(last)  # noqa: E731
    return {"run_dir": str(run_dir), "samples": progress.samples, "step": progress.step,
            **{k: mean(k) for k in ("train_bound", "test_bound", "train_loglik", "test_loglik")}, "skipped_steps": progress.skipped,
            "wall_seconds": progress.wall_seconds, "metrics": str(metrics.path), "checkpoint": str(checkpoint)}
