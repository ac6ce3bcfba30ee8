"""Console scripts: thin Hydra apps around `train(cfg)` and `evaluate(cfg)`, with user mistakes
reported in one line.

A mistake (unknown option or key, a wrong type, an out-of-range value, missing or corrupt data, an
unusable run folder or checkpoint, a launcher whose plugin is not installed) prints `vae-train: error:
<problem>; <fix>` (or `vae-eval: error: ...`) on stderr and exits with 2, no traceback. `--debug` or
HYDRA_FULL_ERROR=1 shows the full traceback instead; anything that is not a user mistake (a bug) keeps
its traceback. A run stopped by SIGINT/SIGTERM prints one line with the command that resumes it and
exits with 128 + the signal number (130, 143). A run folder Hydra created for a job that failed is
removed if the job left it empty (with its date folder, if that is then empty).

Every console script is `run_console_script(app, prog)` around a Hydra app whose job body is
`report_user_errors(prog, fn, cfg)`; before Hydra parses the command line, options go before the
overrides (Hydra's parser takes the overrides as one run) and a leading `~` of a value is expanded.
`vae-train resume_from=RUN_DIR` bypasses composition and runs the run folder's own config.yaml.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_configs, validate
from .errors import RunStopped, UserError, install_extra

CONFIG_PATH = "pkg://vae_cli.conf"
EXIT_USAGE = 2
RUN_FOLDER_KEY = {"vae-train": ("continue", "resume_from"), "vae-eval": ("evaluate", "run_dir")}  # how each app takes a run folder
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
INTERRUPTED = {"vae-train": "interrupted before training started; nothing to resume", "vae-eval": "interrupted; nothing was written"}
LAUNCHER_PLUGINS = {"joblib": "joblib", "submitit_local": "submitit", "submitit_slurm": "submitit"}  # hydra/launcher=slurm: submitit_slurm
# Hydra's options that take a value (`--cfg job`), and --info's optional one.
VALUE_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                 "--experimental-rerun"}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def describe_user_error(exc: BaseException, prog: str = "vae-train") -> str | None:
    """One line for a mistake the user can fix, or None when `exc` is not one."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if group == "hydra/launcher" and option in LAUNCHER_PLUGINS:
            return (f"Hydra's {LAUNCHER_PLUGINS[option]} launcher (hydra/launcher=joblib, submitit_local, submitit_slurm or slurm) "
                    f"is not installed; install it with {install_extra('cluster')}")
        options = [o for o in exc.options or [] if not o.endswith("_schema")]  # typed schemas are not options
        if group and options:
            return f"unknown {group} option '{option}'; choose one of: {', '.join(options)} (e.g. {group}={options[0]})"
        return _first_line(exc)
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override {_first_line(exc)}; write key=value, group=option or key=a,b,c with --multirun"
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) and exc.__cause__ else exc
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = getattr(cause, "full_key", None) or _first_line(cause)
        return f"unknown config key '{key}'; see the keys with `{prog} --cfg job`"
    if isinstance(cause, ValidationError):
        return f"{getattr(cause, 'full_key', '') or 'value'}: {_first_line(cause).rstrip('.')}; see `{prog} --cfg job` for the types"
    if isinstance(exc, (ConfigCompositionException, OmegaConfBaseException)):
        return _first_line(exc) + f"; see `{prog} --help`"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot write {exc.filename} ({exc.strerror}); choose a writable folder with hydra.run.dir="
    return None


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(("full_key", "object_type", "reference_type")))
    return re.sub(r"\s+", " ", text)[:300]


def report_user_errors(prog: str, fn, *args):
    """Call fn(*args); a user mistake becomes one line on stderr and exit code 2, a bug re-raises;
    a run stopped by a signal prints how to resume it and exits with 128 + the signal number."""
    debug = os.environ.get("VAE_CLI_DEBUG") == "1"
    try:
        return fn(*args)
    except RunStopped as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before the training loop took over SIGINT, or in vae-eval
        if debug:
            raise
        print(f"{prog}: {INTERRUPTED.get(prog, 'interrupted')}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - classified below; bugs are re-raised
        message = None if debug else describe_user_error(exc, prog)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run_console_script(app, prog: str) -> None:
    """Run a Hydra app with `report_user_errors` around composition and around the job itself.

    Errors inside the job are caught there too, so Hydra's own multi-line report never prints.
    """
    if "--debug" in sys.argv[1:] or os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ["VAE_CLI_DEBUG"] = "1"
    args = [a for a in sys.argv[1:] if a != "--debug"]
    sys.argv = [sys.argv[0], *report_user_errors(prog, command_line, args, prog)]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's report
    report_user_errors(prog, app)


def command_line(args: list[str], prog: str = "vae-train") -> list[str]:
    """The arguments as Hydra's parser takes them: options first, then the overrides (it reads the
    overrides as one run, so `-m` between two of them was an error), with a leading `~` of a value
    expanded (`dataset.root=~/data`; Hydra's grammar has no `~`). --cfg with --multirun is refused
    in one line: Hydra prints one job's config only."""
    options, overrides, rest = [], [], iter(args)
    for arg in rest:
        if arg.startswith("-"):
            options.append(arg)
            if arg in VALUE_OPTIONS:
                options.append(next(rest, ""))
            elif arg in ("--info", "-i"):
                topic = next(rest, None)
                if topic in INFO_TOPICS:
                    options.append(topic)
                elif topic is not None:
                    overrides.append(expand_home(topic))
        elif "=" not in arg and os.path.isdir(os.path.expanduser(arg)):  # a run folder given bare
            verb, key = RUN_FOLDER_KEY[prog]
            raise UserError(f"'{arg}' is not key=value; to {verb} that run write {prog} {key}={arg}")
        else:
            overrides.append(expand_home(arg))
    if {"--multirun", "-m"} & set(options) and ({"--cfg", "-c"} & set(options) or any(o.startswith("--cfg=") for o in options)):
        example = "likelihood=ais" if prog == "vae-eval" else "model.latent_dim=2"
        raise UserError("--cfg prints the config of one job, not of a sweep; drop --multirun and give each swept key one value "
                        f"(e.g. {example}) to see that job's config")
    return options + overrides


def quoted_path(override: str) -> str:
    """`run_dir=PATH` with PATH quoted for Hydra's override grammar when it holds characters the grammar
    reads: a sweep job's folder is named like `method=aevb,model.latent_dim=20`, so a PATH with "=" is one
    folder (its commas included); without "=", commas still sweep over folders with --multirun."""
    key, _, value = override.partition("=")
    if "=" not in value or value[:1] in "'\"":
        return override
    value = os.path.expanduser(value)
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand_home(override: str) -> str:
    """key=~/folder -> key=/home/me/folder (each ~-value of a comma-separated sweep too); `~key` (a deletion) stays."""
    key, sep, value = override.partition("=")
    if not sep or "~" not in value:
        return override
    return f"{key}={','.join(os.path.expanduser(v) if v.startswith('~') else v for v in value.split(','))}"


def remove_if_empty(run_dir: Path, date_folder: bool) -> None:
    """Remove a run folder that a failed job left empty, and its parent when `date_folder` and it is
    then empty too (Hydra's outputs/<date>/); never anything that holds a file, nor a folder another
    vae-train has locked (it is loading its data, about to claim the folder)."""
    from .locks import RunLock

    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except UserError:
        return
    try:
        for folder in (run_dir, run_dir.parent) if date_folder else (run_dir,):
            folder.rmdir()  # only an empty folder
    except OSError:
        pass
    finally:
        lock.release()


register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    default_dir = hydra_cfg.mode == RunMode.RUN and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    try:
        report_user_errors("vae-train", validate, cfg)  # before the job starts: a typo costs a second
        from .jobs.train import train

        report_user_errors("vae-train", train, cfg)
    finally:  # a job that failed before it claimed its folder leaves no empty outputs/<date>/<time>/
        remove_if_empty(Path(hydra_cfg.runtime.output_dir), date_folder=default_dir)


def _resume_app(args: list[str]) -> None:
    """`vae-train resume_from=RUN_DIR [key=value ...]`: continue a run with its own config.yaml."""
    from .jobs.train import train
    from .runs import resume_config

    given = [a for a in args if a.startswith("resume_from=")]
    extra = given[1:] + [a for a in args if a.startswith("-")]
    if extra:
        raise UserError(f"resume_from= takes one run folder and key=value overrides only, not {extra[0]!r}")
    folder = given[0].partition("=")[2].strip()
    if not folder:
        raise UserError("resume_from= needs a run folder, e.g. vae-train resume_from=outputs/2026-11-25/10-00-00")
    run_dir = Path(folder).expanduser().absolute()
    overrides = [a for a in args if a != given[0]]
    train(resume_config(run_dir, overrides), run_dir=run_dir)


def train_main() -> None:
    """`vae-train`: one training run, a sweep with --multirun, or `resume_from=RUN_DIR`."""
    if any(a.startswith("resume_from=") for a in sys.argv[1:]):
        run_console_script(lambda: _resume_app(sys.argv[1:]), "vae-train")
    else:
        run_console_script(_train_app, "vae-train")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    from .jobs.evaluate import evaluate

    report_user_errors("vae-eval", evaluate, cfg)


def eval_main() -> None:
    """`vae-eval`: one estimate of log p(x) for a trained run, or several with --multirun.

    `estimator=NAME` is accepted as another spelling of `likelihood=NAME`.

    Results go to the run's own `eval/` folder; the folder Hydra insists on creating (and a sweep's
    multirun.yaml) goes to a temporary folder that is removed at exit.
    """
    sys.argv = [a.replace("estimator=", "likelihood=", 1) if a.startswith("estimator=") else a for a in sys.argv]  # an alias
    sys.argv = [quoted_path(a) if a.startswith("run_dir=") else a for a in sys.argv]
    scratch = tempfile.mkdtemp(prefix="vae-eval-")
    os.environ["VAE_EVAL_SCRATCH"] = scratch
    try:
        run_console_script(_eval_app, "vae-eval")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


REPORT_DESCRIPTION = """\
Draw the paper's figures (2-5) and tables from the vae-train runs under a folder, beside the paper's
own numbers: FOLDER/report/ gets report.md, report.csv and the figures (PNG and PDF)."""
REPORT_EXAMPLES = """\
examples:
  vae-report multirun/fig2_mnist/full              a preset's sweep (vae-train experiment=fig2_mnist --multirun)
  vae-report outputs                               every run under outputs/, grouped by config
  vae-report multirun/fig2_mnist/full --train-curve running
                                                   the author's train curve: the minibatch bounds' running average"""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line, `vae-report: error: ...`, and exit code 2 (no usage block)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def report_main() -> None:
    """`vae-report DIR [--train-curve evaluated|running]`: the paper's figures, report.md and report.csv
    for the runs under DIR."""
    from .jobs.report import TRAIN_CURVES, report

    parser = OneLineErrorParser(prog="vae-report", description=REPORT_DESCRIPTION, epilog=REPORT_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", metavar="FOLDER", help="a sweep folder such as multirun/fig2_mnist/full, or any folder holding runs")
    parser.add_argument("--train-curve", choices=TRAIN_CURVES, default="evaluated",
                        help="the train curve: the re-evaluated bound (default) or the running average of the minibatch bounds "
                             "since the previous evaluation (the author's code's curve)")
    args = parser.parse_args()
    made = report_user_errors("vae-report", report, Path(args.folder), args.train_curve)
    print(f"report:     {made['report']}  ({made['drawn']} of {made['runs']} runs drawn, in {made['groups']} groups)")
    print(f"table:      {made['csv']}")
    for path in (p for p in made["figures"] if p.endswith(".png")):
        print(f"figure:     {path}")
    for path in made["duplicates"]:
        print(f"duplicate:  {path} (its seed is counted once, from a longer run)")
    for path in made["unfinished"]:
        print(f"unfinished: {path}")
    for path in made["broken"]:
        print(f"not drawn:  {path}")
    for path in made["no_image"]:
        print(f"no image:   {path}")
