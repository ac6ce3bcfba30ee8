"""vae-report and vae_cli.sweep: run folders written by hand (config.yaml, metrics.jsonl, a checkpoint
where a figure needs one) with known metrics, checked for their groups, labels, seed counts, duplicates,
the values of report.md and report.csv, the running train curve and the figures' files; then smoke
sweeps of the paper's presets end to end on real data, launchers, relaunching a sweep."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import compose_config, run_console_script
from vae_cli.config import to_container
from vae_cli.jobs.report import report
from vae_cli.jobs.report_figures import METHOD_COLOURS, draw_group, series_colours, y_limits
from vae_cli.sweep import load_sweep

BIN = Path(sys.executable).parent
QUIET = ["trainer.progress=false", "speed.threads=1"]
LOG_SAMPLES = [0, 10**5, 10**6, 10**7, 10**8]  # evaluations on the paper's checkpoints (report.md's columns)


# ---------------------------------------------------------------------------------------------------
# Run folders by hand


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> str:
    return yaml.safe_dump(to_container(compose_config(["trainer=debug", *overrides])))


def config(*overrides: str) -> dict:
    """The config.yaml vae-train writes for `vae-train trainer=debug OVERRIDES`."""
    return yaml.safe_load(_composed(tuple(overrides)))


def rows(samples, train, test=None, **more) -> list[dict]:
    """Metrics rows: train / test bounds (lists, or a function of the sample count) at `samples`."""
    value = lambda v, n, k: v(n) if callable(v) else v[k]  # noqa: E731
    out = []
    for k, n in enumerate(samples):
        row = {"samples": n, "step": n // 100, "train_bound": value(train, n, k)}
        row["test_bound"] = value(test, n, k) if test is not None else row["train_bound"] + 1.0
        row.update({key: value(v, n, k) for key, v in more.items()})
        out.append(row)
    return out


def write_run(folder: Path, cfg: dict, metrics: list[dict] | None, seed: int = 0, max_samples: float | None = None) -> Path:
    cfg = {**cfg, "seed": seed}
    if max_samples is not None or metrics:
        cfg["trainer"] = {**cfg["trainer"], "max_samples": float(max_samples if max_samples is not None else metrics[-1]["samples"])}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return folder


def write_checkpoint(folder: Path, cfg: dict, seed: int = 0) -> None:
    """checkpoints/last.pt with the run's config and an untrained model: enough for Figs. 4-5."""
    import torch

    from vae_cli.config import typed_config
    from vae_cli.data_files import IMAGE_SHAPES
    from vae_cli.models import build_vae
    from vae_cli.runs import save_checkpoint

    typed = typed_config(cfg)
    h, w = IMAGE_SHAPES[typed.dataset.name]
    model = build_vae(h * w, typed.model, torch.Generator().manual_seed(seed))
    save_checkpoint(folder, {"config": {**cfg, "seed": seed}, "model": model.state_dict(), "progress": {"samples": 1234}})


def read_csv(folder: Path) -> list[dict]:
    with open(folder / "report" / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def table_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under `heading`, as cells."""
    section = md.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


BOUND = "## Lower bound beside the paper's Figure 2"

# ---------------------------------------------------------------------------------------------------
# Groups and labels

VARIANTS = {  # an override -> what the label of its group says
    "model.hidden=[100]": "model.hidden=[100]",
    "model.latent_dim=5": "model.latent_dim=5",
    "estimator=sgvb_a": "estimator.name=sgvb_a",
    "optimizer=adam": "optimizer.name=adam",
    "method=wake_sleep": "method.name=wake_sleep",
    "dataset.binarize=dynamic": "dataset.binarize=dynamic",
    "dataset.n_train=1000": "dataset.n_train=1000",
    "trainer.batch_size=50": "trainer.batch_size=50",
    "trainer.minibatches=epochs": "trainer.minibatches=epochs",
    "prior.precision=0": "prior.precision=0",
    "reading=paper_text": "reading=paper_text",
    "evaluation.n_samples=5": "evaluation.n_samples=5",
    "model.init_std=0.1": "model.init_std=0.1",
}


def test_runs_that_differ_in_any_config_key_but_the_seed_are_never_one_row(tmp_path):
    write_run(tmp_path / "base_0", config(), rows([0, 1000, 2000], [-500.0, -300.0, -250.0]), seed=0)
    write_run(tmp_path / "base_1", config(), rows([0, 1000, 2000], [-500.0, -290.0, -240.0]), seed=1)
    for k, override in enumerate(VARIANTS):
        write_run(tmp_path / f"variant_{k}", config(override), rows([0, 1000, 2000], [-500.0, -300.0 - k, -250.0 - k]))
    sweep = load_sweep(tmp_path)
    assert len(sweep.groups) == len(VARIANTS) + 1 and not sweep.duplicates and not sweep.problems
    labels = [g.label for g in sweep.groups]
    assert len(set(labels)) == len(labels) and all(labels)
    for k, shown in enumerate(VARIANTS.values()):
        (group,) = [g for g in sweep.groups if g.runs[0].path.name == f"variant_{k}"]
        assert shown in group.label.split(", "), (shown, group.label)
        assert len(group.runs) == 1
    (base,) = [g for g in sweep.groups if g.runs[0].path.name.startswith("base")]
    assert base.seeds == [0, 1] and "optimizer.name=adagrad" in base.label and "model.hidden=[500]" in base.label

    report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    table = table_rows(md, BOUND)
    assert len(table) == len(VARIANTS) + 1 and len({r[3] for r in table}) == len(table)
    assert {r[3] for r in table} == set(labels)
    csv_rows = read_csv(tmp_path)
    assert {r["group"] for r in csv_rows} == set(labels) and len(csv_rows) == 3 * len(labels)
    assert {"optimizer.name", "model.hidden", "reading", "dataset.n_train"} <= set(csv_rows[0])
    base_rows = {int(r["samples"]): r for r in csv_rows if r["group"] == base.label}
    assert base_rows[2000]["train_bound_seeds"] == "2" and float(base_rows[2000]["train_bound_mean"]) == pytest.approx(-245.0)
    assert float(base_rows[2000]["train_bound_min"]) == -250.0 and float(base_rows[2000]["train_bound_max"]) == -240.0


def test_settings_a_resumed_run_may_change_and_the_preset_names_leave_one_group(tmp_path):
    same = ["logger.tensorboard=true", "trainer.max_samples=3e4", "device=cpu", "speed.threads=1", "experiment_name=x",
            "scale_name=smoke", "trainer.progress=true", "trainer.checkpoint_every=5e3"]
    write_run(tmp_path / "base", config(), rows([0, 1000], [-500.0, -300.0]), seed=0)
    for k, override in enumerate(same):
        write_run(tmp_path / f"same_{k}", config(override), rows([0, 1000], [-500.0, -300.0]), seed=k + 1)
    sweep = load_sweep(tmp_path)
    assert len(sweep.groups) == 1 and sweep.groups[0].seeds == list(range(len(same) + 1))
    assert sweep.groups[0].label == "" and sweep.varying == []


OLD_CONFIG = """\
dataset: {name: mnist, root: null, download: true, binarize: none, binarize_seed: 0, n_train: null, test_split: test,
  train_frames: 1500, hidden: [500], decoder: bernoulli}
model: {name: vae, latent_dim: 20, hidden: [500], decoder: bernoulli, init_std: 0.01, decoder_min_log_var: null}
method: {name: aevb, n_leapfrog: null, n_weight_updates: null, target_accept: null, init_step_size: null, jitter: null}
estimator: {name: sgvb_b, n_samples: 1}
optimizer: {name: adagrad, lr: 0.02, eps: 1.0e-10, momentum: 0.0, betas: [0.9, 0.999]}
prior: {precision: 1.0, scope: weights}
posterior: {init_log_sigma: -5.0, kl: closed_form, eval_draws: 0}
trainer: {batch_size: 100, max_samples: 2000.0, eval_schedule: log, eval_per_decade: 4, eval_first: 2000.0,
  eval_every: 1000000.0, eval_estimator: sgvb_b, eval_n_samples: 1, eval_train_points: 1000, eval_test_points: 1000,
  eval_batch_size: 1000, checkpoint_every: 10000.0, resume: false, on_existing: refuse, progress: true, progress_every: 10,
  on_nan: stop, threads: null, figures: true, track_loglik: false, loglik_points: 100, n_models: 1, compile: false,
  flush_denormals: true}
logger: {name: jsonl}
experiment_name: null
scale_name: full
seed: 3
device: auto
"""  # what the previous version (before the redesign) wrote for `vae-train trainer=debug seed=3`


def test_runs_of_the_previous_version_group_with_new_runs_of_the_same_settings(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(OLD_CONFIG)  # old key names, no `reading`: the paper's text read literally
    (tmp_path / "old" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows([0, 2000], [-540.0, -260.0])))
    write_run(tmp_path / "new_paper_text", config("reading=paper_text"), rows([0, 2000], [-540.0, -262.0]), seed=4)
    write_run(tmp_path / "new_author_code", config(), rows([0, 2000], [-540.0, -250.0]), seed=3)
    sweep = load_sweep(tmp_path)
    assert len(sweep.groups) == 2 and not sweep.problems
    by_label = {g.label: g for g in sweep.groups}
    assert set(by_label) == {"reading=paper_text", "reading=author_code"}
    assert sorted(r.path.name for r in by_label["reading=paper_text"].runs) == ["new_paper_text", "old"]
    assert by_label["reading=paper_text"].value_at("train_bound", 2000).mean == pytest.approx(-261.0)


# ---------------------------------------------------------------------------------------------------
# Seeds: duplicates, unequal lengths, stacks


def test_a_seed_found_in_several_folders_is_counted_once_and_the_longest_run_kept(tmp_path):
    """An ordinary day's outputs/: a debug run, its continuation copied to another folder, an interrupted
    run and a TensorBoard run, all seed 0; and one run of seed 1."""
    curve = lambda n: -200.0 - 1e6 / (n + 2000)  # noqa: E731 - the same seed computes the same numbers
    debug = [0, 2000, 3600, 6400, 11300, 20000]
    write_run(tmp_path / "debug", config(), rows(debug, curve))
    write_run(tmp_path / "continued", config(), rows([*debug, 30000], curve), max_samples=3e4)
    write_run(tmp_path / "interrupted", config(), rows(debug[:3], curve), max_samples=2e4)
    write_run(tmp_path / "tensorboard", config("logger.tensorboard=true"), rows(debug, curve))
    write_run(tmp_path / "seed1", config(), rows(debug, lambda n: curve(n) + 2.0), seed=1)
    sweep = load_sweep(tmp_path)
    (group,) = sweep.groups
    assert group.seeds == [0, 1] and [r.path.name for r in group.runs] == ["continued", "seed1"]
    (duplicate,) = sweep.duplicates
    assert duplicate.seed == 0 and duplicate.kept.path.name == "continued"
    assert sorted(r.path.name for r in duplicate.dropped) == ["debug", "interrupted", "tensorboard"]
    assert group.value_at("train_bound", 20000) == (20000, 2, curve(20000) + 1.0, curve(20000), curve(20000) + 2.0)
    assert group.value_at("train_bound", 30000).seeds == 1 and group.last_common("train_bound").samples == 20000

    made = report(tmp_path)
    assert made["drawn"] == 2 and made["runs"] == 5 and len(made["duplicates"]) == 3
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Seeds counted once" in md and "kept continued (30,000 samples)" in md
    assert "interrupted (3,600 samples)" in md and "tensorboard (20,000 samples)" in md
    (row,) = table_rows(md, BOUND)
    assert row[4] == "2 (0, 1)" and row[5] == "30,000" and row[6] == "20,000" and row[7] == f"{curve(20000) + 1.0:.1f}"
    assert "interrupted: unfinished" not in md  # a dropped copy is not a missing run
    at_end = [r for r in read_csv(tmp_path) if r["samples"] == "30000"]
    assert len(at_end) == 1 and at_end[0]["train_bound_seeds"] == "1" and float(at_end[0]["train_bound_mean"]) == pytest.approx(curve(30000))


def test_seeds_of_unequal_length_are_averaged_where_they_have_values_and_drawn_alone_beyond(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {0: [-540.0, -160.0, -130.0, -110.0, -100.0], 1: [-540.0, -158.0, -128.0, -108.0], 2: [-540.0, -156.0, -126.0]}
    for seed, v in values.items():
        write_run(tmp_path / f"seed{seed}", config(), rows(LOG_SAMPLES[: len(v)], v), seed=seed, max_samples=1e8)
    (group,) = load_sweep(tmp_path).groups
    assert [(p.samples, p.seeds) for p in group.points("train_bound")] == [(0, 3), (10**5, 3), (10**6, 3), (10**7, 2), (10**8, 1)]
    assert group.value_at("train_bound", 10**7).mean == pytest.approx(-109.0) and group.last_common("train_bound").samples == 10**6

    fig, ax = plt.subplots()
    drawn, tails = draw_group(ax, group, "train_bound", "tab:blue", "-", 1.0, 1)
    mean, *singles = ax.get_lines()
    assert tails and list(mean.get_xdata()) == [10**5, 10**6] and list(mean.get_ydata()) == pytest.approx([-158.0, -128.0])
    assert sorted(list(line.get_xdata()) for line in singles) == [[10**6, 10**7], [10**6, 10**7, 10**8]]  # seed 2 ends at 1e6
    plt.close(fig)

    report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    (row,) = table_rows(md, BOUND)
    # the paper's model (MNIST, N_z = 20, 500 hidden units): -126.3 at 1e6, -104.2 at 1e7, -98.2 at 1e8 (train)
    assert row[9] == "-128.0 (3) / -126.3 / -1.7" and row[11] == "-109.0 (2) / -104.2 / -4.8" and row[13] == "-100.0 (1) / -98.2 / -1.8"
    assert "seed1: unfinished, 1e7 of 1e8 samples" in md and "seed2: unfinished, 1e6 of 1e8 samples" in md
    at = {int(r["samples"]): r for r in read_csv(tmp_path)}
    assert at[10**7]["train_bound_seeds"] == "2" and float(at[10**7]["train_bound_paper"]) == -104.2
    assert float(at[10**7]["train_bound_diff"]) == pytest.approx(-4.8) and at[10**5]["train_bound_paper"] == ""


def test_a_stack_run_counts_as_its_models_seeds(tmp_path):
    stacked = [dict(r, model=k, seed=5 + k) for n in (0, 1000, 2000) for k in range(3)
               for r in rows([n], [-500.0 + n / 10 + k])]
    write_run(tmp_path / "stack", config("speed.n_models=3"), stacked, seed=5, max_samples=2000)
    write_run(tmp_path / "seed6_alone", config(), rows([0, 1000], [-500.0, -399.0]), seed=6, max_samples=2000)  # shorter than model 1
    write_run(tmp_path / "seed8", config(), rows([0, 1000, 2000], [-500.0, -400.0, -300.0]), seed=8)
    sweep = load_sweep(tmp_path)
    (group,) = sweep.groups
    assert group.seeds == [5, 6, 7, 8] and [r.member for r in group.runs] == [0, 1, 2, None]
    (duplicate,) = sweep.duplicates
    assert duplicate.seed == 6 and duplicate.kept.member == 1 and duplicate.dropped[0].path.name == "seed6_alone"
    assert group.value_at("train_bound", 2000) == (2000, 4, pytest.approx((-300.0 - 299.0 - 298.0 - 300.0) / 4), -300.0, -298.0)


# ---------------------------------------------------------------------------------------------------
# Optimizers and the stepsize search


def test_an_optimizer_sweep_names_each_optimizer_and_the_stepsize_table_compares_stepsizes_alone(tmp_path):
    final = {0.01: -210.0, 0.02: -190.0, 0.1: -200.0}
    for lr, value in final.items():
        write_run(tmp_path / f"adagrad_{lr}", config(f"optimizer.lr={lr}"), rows([0, 1000, 2000], [-500.0, -300.0, value]))
    write_run(tmp_path / "adam", config("optimizer=adam"), rows([0, 1000, 2000], [-500.0, -300.0, -150.0]))  # better, but Adam
    write_run(tmp_path / "adagrad_0.1_short", config("optimizer.lr=0.1"), rows([0, 1000], [-500.0, -250.0]), seed=1, max_samples=2000)
    sweep = load_sweep(tmp_path)
    assert {g.label for g in sweep.groups} == {"optimizer.name=adagrad, optimizer.lr=0.01", "optimizer.name=adagrad, optimizer.lr=0.02",
                                               "optimizer.name=adagrad, optimizer.lr=0.1", "optimizer.name=adam, optimizer.lr=0.001"}
    (adam,) = sweep.select(optimizer__name="adam")
    assert adam.keys["optimizer.eps"] == 1e-8 and adam.keys["optimizer.betas"] == [0.9, 0.999]  # every differing key, in Group.keys

    report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    head = [line for line in md.split("## Stepsize selection", 1)[1].splitlines() if line.startswith("| group")][0]
    assert "lr=0.01 | lr=0.02 | lr=0.1 | best" in head and "0.001" not in head
    (row,) = table_rows(md, "## Stepsize selection")
    # compared at 1000, the last evaluation every seed of the three has: the short seed of lr=0.1 stopped there
    assert row[1:] == ["adagrad", "1,000", "-300.0 (1)", "-300.0 (1)", "**-275.0** (2)", "0.1"]


# ---------------------------------------------------------------------------------------------------
# The running train curve (issue 19)


def test_train_curve_running_draws_and_tabulates_the_running_average_and_says_which_groups_lack_it(tmp_path):
    samples = [0, 10**5, 10**6]
    with_running = [dict(r, train_bound_running=r["train_bound"] - 5.0) if r["samples"] else r
                    for r in rows(samples, [-540.0, -170.0, -130.0])]
    write_run(tmp_path / "new", config(), with_running, max_samples=1e6)
    write_run(tmp_path / "old", config("model.latent_dim=5"), rows(samples, [-540.0, -180.0, -140.0]), max_samples=1e6)

    made = report(tmp_path, train_curve="running")
    md = (tmp_path / "report" / "report.md").read_text()
    by_nz = {row[1]: row for row in table_rows(md, BOUND)}
    assert by_nz["20"][7] == "-135.0" and by_nz["20"][9].startswith("-135.0 (1) / -126.3 / -8.7")  # the running average
    assert by_nz["5"][7] == "-140.0" and by_nz["5"][9].startswith("-140.0 (1) / -141.0 / +1.0")  # no running average: evaluated
    assert "Train: the running average of the minibatch bounds" in md
    notes = md.split("## Notes", 1)[1].split("\n## ", 1)[0]
    assert "model.latent_dim=5: train curve re-evaluated (train_bound)" in notes and str(tmp_path / "old") in notes
    assert str(tmp_path / "new") not in notes and made["train_curve"] == "running"

    report(tmp_path)  # the default: the evaluated curve everywhere
    by_nz = {row[1]: row for row in table_rows((tmp_path / "report" / "report.md").read_text(), BOUND)}
    assert by_nz["20"][7] == "-130.0" and "## Notes" not in (tmp_path / "report" / "report.md").read_text()
    at = {(r["group"], int(r["samples"])): r for r in read_csv(tmp_path)}
    assert float(at[("model.latent_dim=20", 10**6)]["train_bound_running_mean"]) == -135.0  # the CSV holds both curves
    assert at[("model.latent_dim=5", 10**6)]["train_bound_running_seeds"] == "0"


def test_vae_report_train_curve_option_on_the_command_line(tmp_path):
    write_run(tmp_path / "a", config(), [dict(r, train_bound_running=-250.0) for r in rows([0, 2000], [-540.0, -240.0])])
    out = subprocess.run([str(BIN / "vae-report"), str(tmp_path), "--train-curve", "running"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 of 1 runs drawn, in 1 groups" in out.stdout and f"table:      {tmp_path / 'report' / 'report.csv'}" in out.stdout
    assert "Train curve: running" in (tmp_path / "report" / "report.md").read_text()
    bad = subprocess.run([str(BIN / "vae-report"), str(tmp_path), "--train-curve", "minibatch"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice: 'minibatch'" in bad.stderr


# ---------------------------------------------------------------------------------------------------
# Figures


def test_every_figure_as_png_and_pdf_and_fig4_once_per_group_named_by_what_differs_it(tmp_path):
    for name, overrides in {"mnist2": ["model.latent_dim=2"], "mnist2_small": ["model.latent_dim=2", "model.hidden=[100]"],
                            "frey2": ["dataset=frey", "model.latent_dim=2"]}.items():
        cfg = config(*overrides)
        write_checkpoint(write_run(tmp_path / name, cfg, rows([0, 1000, 2000], [-500.0, -300.0, -250.0])), cfg)
    cfg = config("model.latent_dim=3", "model.hidden=[100]", "dataset.n_train=1000")
    loglik = rows([0, 1000, 2000], [-500.0, -300.0, -250.0], train_loglik=[-540.0, -290.0, -240.0], test_loglik=[-540.0, -295.0, -245.0])
    write_run(tmp_path / "fig3_run", cfg, loglik)  # no checkpoint: missing for the image figures only
    ws = config("model.latent_dim=2", "method=wake_sleep")
    write_run(tmp_path / "ws2", ws, rows([0, 1000, 2000], [-500.0, -320.0, -280.0]))

    made = report(tmp_path)
    files = sorted(p.name for p in (tmp_path / "report").iterdir())
    stems = {"fig2_mnist", "fig2_frey", "fig3", "fig5", "fig4_frey", "fig4_mnist_model.hidden=500", "fig4_mnist_model.hidden=100"}
    assert files == sorted([f"{s}.{ext}" for s in stems for ext in ("png", "pdf")] + ["report.csv", "report.md"])
    for s in stems:
        assert (tmp_path / "report" / f"{s}.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "report" / f"{s}.pdf").read_bytes()[:4] == b"%PDF"
    assert made["no_image"] == [str(tmp_path / "fig3_run")]  # an AEVB MNIST model, of Fig. 5, without a checkpoint
    md = (tmp_path / "report" / "report.md").read_text()
    reason = f"no model for Figs. 4-5: no checkpoint at {tmp_path / 'fig3_run' / 'checkpoints' / 'last.pt'}; point at a run folder that holds checkpoints/last.pt"
    assert f"- {tmp_path / 'fig3_run'}: {reason}\n" in md  # whole, and the run is in the tables all the same:
    assert any("dataset.n_train=1000" in row[3].split(", ") for row in table_rows(md, "## Marginal log-likelihood (App. D)"))
    assert "![fig4_mnist_model.hidden=100](fig4_mnist_model.hidden=100.png)" in md


def test_problems_are_listed_whole_and_the_other_runs_drawn(tmp_path):
    write_run(tmp_path / "good", config(), rows([0, 2000], [-540.0, -250.0]))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("dataset: [not, a, config\n")
    write_run(tmp_path / "no_metrics", config(), None)
    write_run(tmp_path / "corrupt", config(), None)
    (tmp_path / "corrupt" / "metrics.jsonl").write_text('{"samples": 0}\n{"samp')
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.yaml").write_text("a: 1\n")
    made = report(tmp_path)
    assert made["drawn"] == 1 and made["runs"] == 5 and len(made["broken"]) == 4
    missing = (tmp_path / "report" / "report.md").read_text().split("## Missing", 1)[1]
    sweep = load_sweep(tmp_path)
    for run in sweep.problems:
        assert f"- {run.label}: not drawn: {run.problem}\n" in missing
    problems = {r.path.name: r.problem for r in sweep.problems}
    assert problems["no_metrics"] == "no metrics.jsonl (the run never reached its first evaluation)"
    assert problems["broken"].startswith("unreadable config.yaml (ParserError") and problems["corrupt"].startswith("corrupt metrics.jsonl")
    assert problems["foreign"].startswith("config.yaml is not a config of this vae-cli: the saved config's dataset.name=None is not one of")


def test_y_limits_are_the_papers_unless_the_curves_leave_them():
    assert y_limits((-150, -95), [-140.0, -100.0]) == (-150, -95, False)
    low, high, widened = y_limits((-150, -95), [-250.0, -190.0])  # a short run: widened to its data, the paper's range kept
    assert widened and low < -250.0 and high > -95 and high - (-95) < 0.1 * (high - low)
    assert y_limits((0, 1600), [])[2] is False
    first = [-5500.0, -3400.0] + [-300.0 + i for i in range(40)]  # two curves' first evaluations at a large stepsize
    low, high, _ = y_limits((-150, -95), first)
    assert -900 < low < -300 and high > -95  # the rest of the curves keep the axis
    assert y_limits((-150, -95), [-190.0 + i for i in range(40)])[0] < -190  # no outlier: every value on the axis


def test_series_colours_follow_what_the_sweep_varies(tmp_path):
    for method in ("aevb", "wake_sleep"):
        write_run(tmp_path / "methods" / method, config(f"method={method}"), rows([0, 2000], [-540.0, -250.0]))
    colours, names = series_colours(load_sweep(tmp_path / "methods").groups, ("model.latent_dim", "dataset.name"))
    assert sorted(colours.values()) == sorted([METHOD_COLOURS["aevb"], METHOD_COLOURS["wake_sleep"]])  # the paper's
    assert sorted(names.values()) == ["AEVB", "Wake-Sleep"]
    for lr in (0.01, 0.02, 0.1):
        for method in ("aevb", "wake_sleep"):
            write_run(tmp_path / "lrs" / f"{method}_{lr}", config(f"optimizer.lr={lr}", f"method={method}"), rows([0, 2000], [-540.0, -250.0]))
    groups = load_sweep(tmp_path / "lrs").groups
    colours, names = series_colours(groups, ("model.latent_dim", "dataset.name"))
    assert len(set(colours.values())) == 6 and len(set(names.values())) == 6  # each stepsize of each method its own colour
    assert not set(colours.values()) & set(METHOD_COLOURS.values())  # none mistaken for the paper's markers


# ---------------------------------------------------------------------------------------------------
# Smoke sweeps of the paper's presets on real data, through vae-report; launchers; relaunching


def run(script: str, *args: str, cwd: Path, data: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_CLI_DATA": str(data)}
    result = run_console_script(script, *args, env=env, cwd=cwd, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def final_rows(sweep: Path) -> dict[str, dict]:
    return {m.parent.name: json.loads(m.read_text().splitlines()[-1]) for m in sweep.glob("*/metrics.jsonl")}


@pytest.mark.slow
def test_fig2_mnist_smoke_sweep_to_report(tmp_path, shared_data):
    """Two N_z, both methods: every run finishes and learns, the figures exist, a table row per run. (Which
    method leads at 3·10^4 samples is not the paper's claim: Fig. 2 compares them from 10^5 on, and the
    10^6-sample sweep of the README's results table checks it.)"""
    run("vae-train", "experiment=fig2_mnist", "scale=smoke", "model.latent_dim=3,20", "hydra/launcher=joblib", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_mnist" / "smoke"
    rows_ = final_rows(sweep)
    assert sorted(rows_) == ["method=aevb,model.latent_dim=20", "method=aevb,model.latent_dim=3",
                             "method=wake_sleep,model.latent_dim=20", "method=wake_sleep,model.latent_dim=3"]
    for nz in (3, 20):
        aevb, ws = rows_[f"method=aevb,model.latent_dim={nz}"], rows_[f"method=wake_sleep,model.latent_dim={nz}"]
        assert aevb["samples"] == ws["samples"] == 30_000
        assert min(aevb["test_bound"], ws["test_bound"]) > -543.0 + 250  # from the untrained bound, about -543
    out = run("vae-report", str(sweep), cwd=tmp_path, data=shared_data).stdout
    assert "4 of 4 runs drawn, in 4 groups" in out
    report_dir = sweep / "report"
    for name in ("fig2_mnist.png", "fig2_mnist.pdf", "fig5.png", "fig5.pdf", "report.md", "report.csv"):
        assert (report_dir / name).is_file() and (report_dir / name).stat().st_size > 1000, name
    table = table_rows((report_dir / "report.md").read_text(), BOUND)
    assert sorted(r[3] for r in table) == ["method.name=aevb, model.latent_dim=20", "method.name=aevb, model.latent_dim=3",
                                           "method.name=wake_sleep, model.latent_dim=20", "method.name=wake_sleep, model.latent_dim=3"]


@pytest.mark.slow
def test_fig3_smoke_sweep_to_report(tmp_path, shared_data):
    """Both N_train, all three methods, the App. D log-likelihood tracked; Fig. 3 and its table."""
    run("vae-train", "experiment=fig3", "scale=smoke", "trainer.max_samples=1e4", "evaluation.every=5e3",
        "evaluation.loglik_points=30", "hydra/launcher=joblib", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig3" / "smoke"
    rows_ = final_rows(sweep)
    assert len(rows_) == 6
    assert all(r["train_loglik"] is not None and r["test_loglik"] is not None for r in rows_.values())
    assert all(r["train_bound"] is None for name, r in rows_.items() if "mcem" in name)  # no q(z|x)
    run("vae-report", str(sweep), cwd=tmp_path, data=shared_data)
    assert (sweep / "report" / "fig3.png").is_file() and (sweep / "report" / "fig3.pdf").is_file()
    md = (sweep / "report" / "report.md").read_text()
    assert len(table_rows(md, "## Marginal log-likelihood (App. D)")) == 6


@pytest.mark.slow
def test_fig4_draws_the_two_manifolds_and_the_stepsize_search_names_a_winner(tmp_path, shared_data):
    run("vae-train", "experiment=fig4", "scale=smoke", "trainer.max_samples=5e3", *QUIET, cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig4" / "smoke"
    run("vae-report", str(sweep), cwd=tmp_path, data=shared_data)
    for name in ("fig4_mnist.png", "fig4_frey.png", "fig4_mnist.pdf", "fig4_frey.pdf"):
        assert (sweep / "report" / name).is_file(), name
    run("vae-train", "experiment=fig2_frey", "hparams_search=stepsize", "scale=smoke", "model.latent_dim=5",
        "trainer.max_samples=1e4", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    stepsize = tmp_path / "multirun" / "stepsize" / "fig2_frey" / "smoke"
    assert len(list(stepsize.glob("*/metrics.jsonl"))) == 3
    run("vae-report", str(stepsize), cwd=tmp_path, data=shared_data)
    md = (stepsize / "report" / "report.md").read_text()
    (row,) = table_rows(md, "## Stepsize selection")
    assert row[-1] in ("0.01", "0.02", "0.1") and "**" in " ".join(row)


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, shared_data):
    """The cluster path for real: jobs submitted through submitit (local executor), each a process."""
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3",
        "hydra/launcher=submitit_local", *QUIET, "--multirun", cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    assert {r["samples"] for r in final_rows(sweep).values()} == {3000} and len(final_rows(sweep)) == 2
    assert list(sweep.glob(".submitit/*/*_log.out"))  # submitit's own job logs


def test_joblib_launcher_runs_jobs_side_by_side(tmp_path, shared_data):
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3",
        "hydra/launcher=joblib", "trainer.progress=false", "--multirun", cwd=tmp_path, data=shared_data)
    assert len(final_rows(tmp_path / "multirun" / "fig2_frey" / "smoke")) == 2


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_a_sweep_killed_after_its_first_job_and_launched_again_runs_only_the_missing_jobs(tmp_path, shared_data):
    args = [str(BIN / "vae-train"), "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e4", *QUIET, "--multirun"]
    env = {**os.environ, "VAE_CLI_DATA": str(shared_data)}
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    first = sweep / "method=aevb,model.latent_dim=2"
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not ((first / "figures" / "samples.png").is_file() and (tmp_path / "multirun").exists()) and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)  # the whole sweep, at once, as a preempted node would
    finally:
        process.wait()
    finished = _hashes(first)
    assert json.loads((first / "metrics.jsonl").read_text().splitlines()[-1])["samples"] == 30_000
    again = run("vae-train", *args[1:], cwd=tmp_path, data=shared_data)
    assert f"{first}: finished already (30000 samples), nothing to do" in again.stdout
    assert _hashes(first) == finished  # the finished job was not touched
    rows_ = final_rows(sweep)
    assert len(rows_) == 2 and {r["samples"] for r in rows_.values()} == {30_000}


def test_report_draws_what_exists_and_lists_broken_and_unfinished_runs(tmp_path, shared_data):
    run("vae-train", "experiment=fig2_frey", "scale=smoke", "model.latent_dim=2", "trainer.max_samples=3e3", *QUIET, "--multirun",
        cwd=tmp_path, data=shared_data)
    sweep = tmp_path / "multirun" / "fig2_frey" / "smoke"
    ws = sweep / "method=wake_sleep,model.latent_dim=2"
    lines = (ws / "metrics.jsonl").read_text().splitlines()
    (ws / "metrics.jsonl").write_text(lines[0] + "\n")  # as if stopped after its first evaluation: unfinished
    broken = sweep / "method=aevb,model.latent_dim=9"
    broken.mkdir()
    (broken / "config.yaml").write_text("dataset: [not, a, config\n")
    out = run("vae-report", str(sweep), cwd=tmp_path, data=shared_data).stdout
    assert "2 of 3 runs drawn" in out and f"unfinished: {ws}" in out and f"not drawn:  {broken}" in out
    md = (sweep / "report" / "report.md").read_text()
    assert f"- {ws}: unfinished, 0 of 3,000 samples" in md and f"- {broken}: not drawn: unreadable config.yaml" in md
    for name in ("fig2_frey.png", "fig2_frey.pdf", "fig4_frey.png", "fig4_frey.pdf"):  # Fig. 4 from the AEVB run's checkpoint
        assert (sweep / "report" / name).is_file(), name


def _foreign_folder(tmp: Path) -> Path:
    """A folder with a config.yaml that vae-train did not write."""
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "config.yaml").write_text("a: 1\n")
    return tmp / "foreign"


@pytest.mark.parametrize("make,needle", [
    (lambda tmp: tmp / "nowhere", "is not a folder"),
    (lambda tmp: tmp, "holds no vae-train runs"),
    (_foreign_folder, "no run under"),
])
def test_vae_report_bad_folders_are_one_line_and_exit_2(tmp_path, shared_data, make, needle):
    result = run("vae-report", str(make(tmp_path)), cwd=tmp_path, data=shared_data, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vae-report: error: ") and needle in lines[0], result.stderr
