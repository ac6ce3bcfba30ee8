"""The training loop on real data: it learns, it is reproducible, it resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config
from helpers import SHORT, run_training, straight_and_resumed, without_wall_clock
from vae_cli.data import Dataset, load_dataset
from vae_cli.data_files import read_pixels
from vae_cli.errors import UserError
from vae_cli.jobs.train import build_learner
from vae_cli.loop import evaluation_points
from vae_cli.runs import CHECKPOINT_FILE, load_checkpoint, read_metrics

# After `train` (or `configure_cpu`) in a fresh process: how many of 2^22 subnormals survive x * 1 on
# torch's threads (0 if every thread flushes them).
SUBNORMAL_PROBE = "import torch; print(int((torch.full((1 << 22,), 1e-39) * 1.0).count_nonzero()))"
TRAIN_THEN_PROBE = "import sys; from conftest import compose_config; from vae_cli.jobs.train import train; " \
                   "train(compose_config(sys.argv[2:]), run_dir=sys.argv[1])"


def subnormal_float32(w: torch.Tensor) -> torch.Tensor:
    """Which entries are subnormal, read from the bits (exponent 0, mantissa not): float comparisons
    would read them as 0 in a process that trained before (DAZ stays set on its main thread)."""
    bits = w.float().view(torch.int32) & 0x7FFFFFFF
    return (bits > 0) & (bits < 0x00800000)


def in_fresh_process(code: str, *args: str) -> int:
    out = subprocess.run([sys.executable, "-c", code + "\n" + SUBNORMAL_PROBE, *args], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent)  # where conftest is
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("flush", [True, False])
def test_configure_cpu_flushes_subnormals_on_every_thread(flush):
    surviving = in_fresh_process(f"from vae_cli.jobs import configure_cpu; configure_cpu(2, {flush})")
    assert surviving == (0 if flush else 1 << 22)


@pytest.mark.slow  # two 3e4-sample runs in fresh processes; `train_throughput.py --keep-denormals` measures the same switch
def test_flushing_subnormals_reaches_every_thread_of_vae_train_and_changes_no_bound(tmp_path, shared_data):
    """3*10^4 samples of plain Adagrad (the accumulator starting at 0, reading=paper_text's) take
    weights of never-lit pixels below 1.2e-38 (the weight prior's decay): they stay subnormal with
    speed.flush_denormals=false and none does with the default. (The author's accumulator of 1e-8
    bounds the root below by 1e-4, so the decay is only about 0.4% a step and no weight gets near
    the subnormal range in 3*10^4 samples.) Every parameter above 1e-20 in magnitude ends bit for bit
    the same, and so do the bounds, to 1e-6 relative (README, "What a run writes": a rare, unexplained
    variation of one evaluation between processes, 4e-7 relative)."""
    weights, rows = {}, {}
    for flush in (True, False):
        run = tmp_path / f"flush_{flush}"
        args = [f"dataset.root={shared_data}", *SHORT, "trainer.max_samples=3e4", "optimizer.initial_accumulator_value=0.0",
                "speed.threads=2", f"speed.flush_denormals={flush}"]
        surviving = in_fresh_process(TRAIN_THEN_PROBE, str(run), *args)
        assert surviving == (0 if flush else 1 << 22)
        weights[flush] = load_checkpoint(run / CHECKPOINT_FILE)["model"]
        rows[flush] = without_wall_clock(read_metrics(run))
    assert sum(int(subnormal_float32(w).sum()) for w in weights[False].values()) > 1000
    assert not any(subnormal_float32(w).any() for w in weights[True].values())
    for name, w in weights[True].items():
        v = weights[False][name]
        decayed = (w.abs() < 1e-20) & (v.abs() < 1e-20)  # pixels not lit in the samples seen: their weights only decay
        assert torch.equal(w[~decayed], v[~decayed]), name
    assert len(rows[True]) == len(rows[False])
    for a, b in zip(rows[True], rows[False]):
        floats = {k for k, v in b.items() if isinstance(v, float)}
        assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
        assert {k: a[k] for k in floats} == pytest.approx({k: b[k] for k in floats}, rel=1e-6)


def test_evaluation_points_are_log_spaced_on_step_boundaries():
    def points(*overrides):
        e = compose_config(list(overrides)).evaluation
        return evaluation_points(e.schedule, e.per_decade, e.first, e.every, 100, 1_000_000)

    assert points("evaluation.first=1e4", "evaluation.per_decade=2") == [0, 10_000, 31_700, 100_000, 316_300, 1_000_000]
    assert points("evaluation.schedule=linear", "evaluation.every=3e5") == [0, 300_000, 600_000, 900_000, 1_000_000]


def test_a_short_mnist_run_raises_the_test_bound_and_writes_its_folder(tmp_path, shared_data):
    summary, rows = run_training(tmp_path, "run", "trainer.max_samples=3e4", "trainer.figures=true", data_root=shared_data)
    assert rows[0]["samples"] == 0 and rows[-1]["samples"] == 30_000
    assert rows[-1]["test_bound"] > rows[0]["test_bound"] + 200  # from about -543 nats to about -195
    assert rows[-1]["test_bound"] > -220
    assert all(r["estimator"] == "sgvb_b" and r["n_samples"] == 1 for r in rows)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "figures" / "samples.png").is_file()
    assert (run / "figures" / "reconstructions.png").is_file()
    state = load_checkpoint(run / CHECKPOINT_FILE)
    assert state["progress"]["samples"] == 30_000 == summary["samples"]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path, shared_data):
    args = ("trainer.max_samples=5e3", "dataset.n_train=2000", "evaluation.first=1e3")
    _, first = run_training(tmp_path, "a", *args, data_root=shared_data)
    _, second = run_training(tmp_path, "b", *args, data_root=shared_data)
    _, other = run_training(tmp_path, "c", *args, "seed=1", data_root=shared_data)
    assert without_wall_clock(first) == without_wall_clock(second)
    assert without_wall_clock(first) != without_wall_clock(other)


@pytest.mark.parametrize("extra", [[], ["dataset.binarize=dynamic", "estimator=sgvb_a"], ["trainer.minibatches=epochs"]],
                         ids=["default", "dynamic-sgvb_a", "epochs"])
def test_n_steps_straight_equal_half_resume_half(tmp_path, shared_data, extra):
    """Data order (with replacement, or the epoch's permutation and the position in it), noise, optimizer
    state with its warm-up schedule, and counters all survive a checkpoint (issue: exact resume)."""
    args = ("dataset.n_train=1500", "evaluation.first=1e3", "trainer.checkpoint_every=1e3", *extra)
    straight_and_resumed(tmp_path, *args, data_root=shared_data)


def test_frey_face_trains_with_the_gaussian_decoder(tmp_path, shared_data):
    _, rows = run_training(tmp_path, "frey", "dataset=frey", "model.latent_dim=5", "trainer.max_samples=2e4", data_root=shared_data)
    assert rows[-1]["test_points"] == 365 and rows[-1]["train_points"] == 1000  # the shuffled 1600 / 365 split
    assert rows[-1]["test_bound"] > rows[0]["test_bound"] + 100


def test_the_shuffled_frey_split_depends_on_split_seed_alone_and_the_sequential_one_holds_out_the_end_of_the_video(shared_data):
    """The author's split (PAPER.md §12.4): the 1965 frames shuffled by dataset.split_seed, 1600 train and
    365 held out; the same frames (by content) in every run with that split_seed, whatever its seed, and
    others with another split_seed. split=sequential with 1500 training frames (reading=paper_text's
    split) holds out the last 465 frames of the video, in video order."""
    video = torch.from_numpy(read_pixels("frey", shared_data, False)["all"].astype(np.float32) / np.float32(256.0))  # (1965, 560)
    cpu = torch.device("cpu")

    def split(*overrides):
        return load_dataset(compose_config([f"dataset.root={shared_data}", "dataset=frey", *overrides]).dataset, cpu)

    def frames(x):  # the rows' contents, as a multiset
        return sorted(bytes(row.numpy().tobytes()) for row in x)

    first, again, reseeded, other = split("seed=3"), split("seed=3"), split("seed=4"), split("seed=3", "dataset.split_seed=1")
    assert (first.n_train, first.test.shape[0]) == (1600, 365)
    assert frames(torch.cat([first.train, first.test])) == frames(video)  # a split of the video's frames, each once
    assert frames(first.test) != frames(video[1600:])  # shuffled, not the end of the video
    for same in (again, reseeded):
        assert torch.equal(same.test, first.test) and torch.equal(same.train, first.train)
    assert frames(other.test) != frames(first.test) and frames(torch.cat([other.train, other.test])) == frames(video)
    for sequential in (split("dataset.split=sequential", "dataset.train_frames=1500"), split("reading=paper_text")):
        assert torch.equal(sequential.test, video[1500:]) and torch.equal(sequential.train, video[:1500])


def _drawn_indices(overrides: list[str], n_steps: int, n: int = 1000) -> list[torch.Tensor]:
    """The training rows of each of `n_steps` steps of the learner `vae-train` builds, on n random points."""
    cfg = compose_config(["model.hidden=[8]", "model.latent_dim=2", *overrides])
    x = torch.rand(n, 12, generator=torch.Generator().manual_seed(0))
    data = Dataset("mnist", x, x[:10], x, (3, 4), "none")
    learner = build_learner(cfg, data, torch.device("cpu"))
    drawn, minibatch = [], data.minibatch
    data.minibatch = lambda idx, generator: drawn.append(idx.clone()) or minibatch(idx, generator)  # noqa: E731
    for _ in range(n_steps):
        learner.step()
    return drawn


def test_minibatches_with_replacement_repeat_points_within_an_epoch_and_epochs_visit_each_point_once():
    """trainer.minibatches=with_replacement (the author's, the default): M uniform draws a step
    (PAPER.md §12.3), so one epoch's worth of steps repeats points and misses others (about 1 - 1/e
    of the N points are drawn); epochs: every point once per epoch, in a new order each epoch."""
    assert compose_config([]).trainer.minibatches.value == "with_replacement"
    for overrides in ([], ["trainer.minibatches=with_replacement"]):
        drawn = _drawn_indices(overrides, 10)  # N / M = 10 steps: one epoch's worth
        assert all(idx.shape == (100,) for idx in drawn)
        seen = torch.cat(drawn)
        assert len(seen.unique()) < 800 and 0 <= seen.min() and seen.max() < 1000  # repeats; a permutation would hold all 1000
    drawn = _drawn_indices(["trainer.minibatches=epochs"], 30)
    epochs = [torch.cat(drawn[e * 10 : (e + 1) * 10]) for e in range(3)]
    for order in epochs:
        assert torch.equal(order.sort().values, torch.arange(1000))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_tensorboard_logger_writes_event_files(tmp_path, shared_data):
    run_training(tmp_path, "tb", "logger=tensorboard", "trainer.max_samples=2e3", "dataset.n_train=1000", data_root=shared_data)
    assert list((tmp_path / "tb" / "tb").glob("events.out.tfevents.*"))


def test_a_run_folder_is_never_overwritten(tmp_path, shared_data):
    run_training(tmp_path, "run", "trainer.max_samples=1e3", "dataset.n_train=1000", data_root=shared_data)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds a run; continue that run with vae-train resume_from="):
        run_training(tmp_path, "run", "trainer.max_samples=1e3", "dataset.n_train=1000", data_root=shared_data)
    with pytest.raises(UserError, match="different config"):
        run_training(tmp_path, "run", "trainer.max_samples=2e3", "dataset.n_train=1000", "trainer.on_existing=resume", "seed=5", data_root=shared_data)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch: device=cuda is checked on a machine with one")
@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_device_cuda_runs_the_same_code_path(tmp_path, shared_data, method):
    """The one loop with data, parameters, generators and optimizer state on the GPU (a stack of two
    models): its bounds after 3e4 samples are the CPU run's up to the noise (the devices' random
    streams differ), and a resumed GPU run equals the straight one."""
    args = (f"method={method}", "trainer.max_samples=3e4", "speed.n_models=2")
    _, cpu = run_training(tmp_path, "cpu", *args, "device=cpu", data_root=shared_data)
    _, gpu = run_training(tmp_path, "gpu", *args, "device=cuda", data_root=shared_data)
    assert [(r["samples"], r["model"]) for r in cpu] == [(r["samples"], r["model"]) for r in gpu]
    for a, b in zip(cpu[-2:], gpu[-2:]):  # the last evaluation of both models
        assert abs(a["test_bound"] - b["test_bound"]) < 8, (a["test_bound"], b["test_bound"])
    straight_and_resumed(tmp_path / "resume", f"method={method}", "device=cuda", data_root=shared_data)
