"""The training loop, Algorithm 1 of the paper, shared by every method and every way of running it.

    repeat
        X^M <- random minibatch of M datapoints           learner.step(): its sampler,
        eps <- random samples from p(eps)                 then the method's updates
        g <- grad L~^M(theta, phi; X^M, eps); theta, phi <- update with g
    until the budget of training samples is spent

Around it, at the sample counts of `evaluation.schedule`, the bound (or log p(x)) of the train and test
data is evaluated and logged against "training samples evaluated" (Figs. 2-3's x-axis); every
`trainer.checkpoint_every` samples, and on SIGINT or SIGTERM, the whole state is saved so that a
resumed run continues exactly; the divergence guard reads back the steps' flags every
`trainer.progress_every` steps, when the progress bar refreshes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm

from .errors import RunStopped
from .methods import Step
from .optim import NonFiniteGuard
from .signals import GracefulStop


class Learner(Protocol):
    """What the loop trains: a method with its data, sampler and random streams (`jobs/train.py`),
    or a stack of such (`accel/stack.py`)."""

    batch_size: int  # datapoints a step evaluates (M; a stack of K models: M per model)
    skip_nonfinite: bool  # trainer.on_nan=skip_batch: non-finite steps are skipped and counted, not fatal

    def step(self) -> Step: ...


@dataclass
class Progress:
    """The counters of a run, checkpointed."""

    step: int = 0
    samples: int = 0  # training samples evaluated = steps x M
    wall_seconds: float = 0.0  # training and evaluation time, summed over resumptions
    skipped: int = 0  # updates skipped for a non-finite bound or gradient (trainer.on_nan=skip_batch)
    running_sum: float = 0.0  # sum of the steps' mean minibatch bounds since the last scheduled evaluation
    running_steps: int = 0  # the number of those steps


@dataclass
class Hooks:
    """What the loop does besides training, given by the job."""

    evaluate: Callable[[Progress, float | None, Callable[[], float]], None]  # log an evaluation (running bound, clock)
    checkpoint: Callable[[Progress], object]  # save everything needed to continue; returns where
    diverged: Callable[[int], Exception]  # the error for a non-finite step, given its number
    schedule: list[int] = field(default_factory=list)  # sample counts still to evaluate at
    restarts: set[int] = field(default_factory=set)  # evaluations after which the running minibatch bound starts again


def evaluation_points(schedule: str, per_decade: int, first: float, every: float, batch_size: int, max_samples: int) -> list[int]:
    """Sample counts at which to evaluate: 0, then log- or evenly spaced, then the end."""
    if schedule == "log":
        n = int(math.ceil(per_decade * math.log10(max_samples / first))) + 1
        raw = [first * 10 ** (k / per_decade) for k in range(max(n, 0))]
    else:
        raw = [every * k for k in range(1, int(max_samples // every) + 1)]
    on_steps = {int(math.ceil(s / batch_size)) * batch_size for s in raw}  # evaluations fall on step boundaries
    return sorted({0, *(s for s in on_steps if s < max_samples), max_samples})


def train_loop(learner: Learner, progress: Progress, max_samples: int, checkpoint_every: int, hooks: Hooks,
               guard: NonFiniteGuard, bar: tqdm, stop: GracefulStop, refresh_every: int, resume_command: str) -> None:
    """Algorithm 1 until `max_samples`, with the evaluations, checkpoints and stops around it."""
    next_checkpoint = (progress.samples // checkpoint_every + 1) * checkpoint_every
    base, start = progress.wall_seconds, time.perf_counter()

    def wall() -> float:  # training and evaluation time of the run so far
        return base + time.perf_counter() - start

    def refresh() -> None:  # one host sync per `refresh_every` steps
        steps = guard.collect(progress.step)
        if steps.bad and not learner.skip_nonfinite:
            raise hooks.diverged(steps.first_bad)
        progress.skipped += steps.bad
        progress.running_sum, progress.running_steps = guard.running()
        if steps.mean_bound is not None:
            bar.set_postfix({"bound": f"{steps.mean_bound:.2f}"}, refresh=False)
        bar.update(progress.samples - bar.n)
        progress.wall_seconds = wall()

    while True:
        if hooks.schedule and progress.samples >= hooks.schedule[0]:
            refresh()
            hooks.evaluate(progress, progress.running_sum / progress.running_steps if progress.running_steps else None, wall)
            if progress.samples in hooks.restarts:  # not at a run's own last evaluation: a resumed run must log the same
                progress.running_sum, progress.running_steps = 0.0, 0
                guard.restart_running()
            hooks.schedule.pop(0)
        if progress.samples >= max_samples:
            break
        if progress.samples >= next_checkpoint or stop.requested:
            refresh()
            saved = hooks.checkpoint(progress)
            next_checkpoint = (progress.samples // checkpoint_every + 1) * checkpoint_every
            if stop.requested:
                raise RunStopped(f"{stop.signal_name}: saved a checkpoint at step {progress.step} ({progress.samples} samples) "
                                 f"in {saved}; resume with: {resume_command}", stop.exit_code)
        shown, nonfinite = learner.step()  # X^M, eps, g, update (Algorithm 1)
        guard.observe(shown, nonfinite)
        progress.step += 1
        progress.samples += learner.batch_size
        if progress.step % refresh_every == 0:
            refresh()
    refresh()
    progress.wall_seconds = wall()
