"""What vae-train prints while it works: lines labelled by the sweep job they belong to, notices on the
progress bar while it stands still (evaluations, compilation), and the files a finished run wrote."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .. import loggers


class Console:
    """print() for a job: each line starts with `label` (in a sweep: "[<job folder>] ") and goes above the bar."""

    def __init__(self, label: str = ""):
        self.label = label

    def __call__(self, text: str) -> None:
        tqdm.write("\n".join(self.label + line for line in text.splitlines()), file=sys.stdout)
        sys.stdout.flush()  # whole lines: the jobs of a parallel sweep share one stdout


def evaluation_notice(cfg, learner) -> str:
    """What the bar says while the loop evaluates (it stands still for seconds to a minute)."""
    what = "bounds" if learner.capabilities.bound else "log p(x) (App. D)"
    if learner.capabilities.bound and cfg.evaluation.loglik:
        what = "bounds and log p(x) (App. D)"
    models = len(learner.members())
    return f"evaluating train and test {what}" + (f" of {models} models" if models > 1 else "")


def announce_compilation(learner, bar: tqdm, say: Console) -> None:
    """A line, and a notice on the bar, before the first compiled step: compiling takes tens of seconds."""
    compiled = learner.step_fn

    def first_step(*args):
        say("compiling the update (speed.compile=true): tens of seconds")
        learner.step_fn = compiled
        with bar_notice(bar, "compiling the update"):
            return compiled(*args)

    learner.step_fn = first_step


@contextmanager
def bar_notice(bar: tqdm, text: str) -> Iterator[None]:
    """`text` in place of the bar's postfix while the bar stands still (nothing on a disabled bar)."""
    if bar.disable:
        yield
        return
    shown = bar.postfix
    bar.set_postfix_str(text, refresh=True)
    try:
        yield
    finally:
        bar.postfix = shown


def report_files(say: Console, cfg, run_dir: Path, metrics: Path, saved: Path, figures: list[Path], skipped: int) -> None:
    """The end-of-run lines: where the metrics, checkpoint and figures are, the TensorBoard folder and
    the MLflow run, and the updates skipped for non-finite values."""
    say(f"metrics:    {metrics}\ncheckpoint: {saved}")
    if figures:
        say(f"figures:    {figures[0].parent}/ ({', '.join(f.name for f in figures)})")
    if cfg.logger.tensorboard:
        say(f"tensorboard: {run_dir / 'tb'}/ (tensorboard --logdir {shlex.quote(str(run_dir / 'tb'))})")
    if cfg.logger.mlflow and (run_dir / loggers.MLFLOW_FILE).is_file():
        tracked = json.loads((run_dir / loggers.MLFLOW_FILE).read_text())
        say(f"mlflow:     run {tracked['run_id']} in {tracked['tracking_uri']} "
            f"(mlflow ui --backend-store-uri {shlex.quote(tracked['tracking_uri'])})")
    if skipped:
        say(f"skipped:    {skipped} updates with a non-finite bound or gradient (trainer.on_nan=skip_batch)")
