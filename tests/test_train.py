"""The training loop on real data: it learns, it is reproducible, it resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from helpers import SHORT, run_training, straight_and_resumed, without_wall_clock
from vae_cli.errors import UserError
from vae_cli.runs import CHECKPOINT_FILE, load_checkpoint, read_metrics
from vae_cli.train import evaluation_points

# After `train` (or `configure_cpu`) in a fresh process: how many of 2^22 subnormals survive x * 1 on
# torch's threads (0 if every thread flushes them).
SUBNORMAL_PROBE = "import torch; print(int((torch.full((1 << 22,), 1e-39) * 1.0).count_nonzero()))"
TRAIN_THEN_PROBE = "import sys; from conftest import compose_config; from vae_cli.train import train; " \
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
    surviving = in_fresh_process(f"from vae_cli.train import configure_cpu; configure_cpu(2, {flush})")
    assert surviving == (0 if flush else 1 << 22)


def test_flushing_subnormals_reaches_every_thread_of_vae_train_and_changes_no_bound(tmp_path, shared_data):
    """3*10^4 samples take weights of never-lit pixels below 1.2e-38 (the weight prior's decay): they
    stay subnormal with trainer.flush_denormals=false and none does with the default. Every parameter
    above 1e-20 in magnitude ends bit for bit the same, and so do the bounds, to 1e-6 relative (README, "What a run
    writes": a rare, unexplained variation of one evaluation between processes, 4e-7 relative)."""
    weights, rows = {}, {}
    for flush in (True, False):
        run = tmp_path / f"flush_{flush}"
        args = [f"dataset.root={shared_data}", *SHORT, "trainer.max_samples=3e4", "trainer.threads=2", f"trainer.flush_denormals={flush}"]
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
    cfg = compose_config(["trainer.max_samples=1e6", "trainer.eval_first=1e4", "trainer.eval_per_decade=2"])
    assert evaluation_points(cfg.trainer, 100, 1_000_000) == [0, 10_000, 31_700, 100_000, 316_300, 1_000_000]
    cfg = compose_config(["trainer.eval_schedule=linear", "trainer.eval_every=3e5"])
    assert evaluation_points(cfg.trainer, 100, 1_000_000) == [0, 300_000, 600_000, 900_000, 1_000_000]


def test_a_short_mnist_run_raises_the_test_bound_and_writes_its_folder(tmp_path, shared_data):
    summary, rows = run_training(tmp_path, "run", "trainer.max_samples=3e4", "trainer.figures=true", data_root=shared_data)
    assert rows[0]["samples"] == 0 and rows[-1]["samples"] == 30_000
    assert rows[-1]["test_bound"] > rows[0]["test_bound"] + 200  # from about -543 nats to about -190
    assert rows[-1]["test_bound"] > -220
    assert all(r["estimator"] == "sgvb_b" and r["n_samples"] == 1 for r in rows)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "figures" / "samples.png").is_file()
    assert (run / "figures" / "reconstructions.png").is_file()
    state = load_checkpoint(run / CHECKPOINT_FILE)
    assert state["progress"]["samples"] == 30_000 == summary["samples"]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path, shared_data):
    args = ("trainer.max_samples=5e3", "dataset.n_train=2000", "trainer.eval_first=1e3")
    _, first = run_training(tmp_path, "a", *args, data_root=shared_data)
    _, second = run_training(tmp_path, "b", *args, data_root=shared_data)
    _, other = run_training(tmp_path, "c", *args, "seed=1", data_root=shared_data)
    assert without_wall_clock(first) == without_wall_clock(second)
    assert without_wall_clock(first) != without_wall_clock(other)


@pytest.mark.parametrize("extra", [[], ["dataset.binarize=dynamic", "estimator=sgvb_a"]])
def test_n_steps_straight_equal_half_resume_half(tmp_path, shared_data, extra):
    """Data order, noise, optimizer state and counters all survive a checkpoint (issue: exact resume)."""
    args = ("dataset.n_train=1500", "trainer.eval_first=1e3", "trainer.checkpoint_every=1e3", *extra)
    straight_and_resumed(tmp_path, *args, data_root=shared_data)


def test_frey_face_trains_with_the_gaussian_decoder(tmp_path, shared_data):
    _, rows = run_training(tmp_path, "frey", "dataset=frey", "model.latent_dim=5", "trainer.max_samples=2e4", data_root=shared_data)
    assert rows[-1]["test_points"] == 465 and rows[-1]["train_points"] == 1000
    assert rows[-1]["test_bound"] > rows[0]["test_bound"] + 100


def test_tensorboard_logger_writes_event_files(tmp_path, shared_data):
    run_training(tmp_path, "tb", "logger=tensorboard", "trainer.max_samples=2e3", "dataset.n_train=1000", data_root=shared_data)
    assert list((tmp_path / "tb" / "tb").glob("events.out.tfevents.*"))


def test_a_run_folder_is_never_overwritten(tmp_path, shared_data):
    run_training(tmp_path, "run", "trainer.max_samples=1e3", "dataset.n_train=1000", data_root=shared_data)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="already holds a run; continue it with trainer.resume=true"):
        run_training(tmp_path, "run", "trainer.max_samples=1e3", "dataset.n_train=1000", data_root=shared_data)
    with pytest.raises(UserError, match="different config"):
        run_training(tmp_path, "run", "trainer.max_samples=2e3", "dataset.n_train=1000", "trainer.resume=true", "seed=5", data_root=shared_data)
    assert before == {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch: device=cuda is checked on a machine with one")
@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_device_cuda_runs_the_same_code_path(tmp_path, shared_data, method):
    """The one loop with data, parameters, generators and optimizer state on the GPU (a stack of two
    models): its bounds after 3e4 samples are the CPU run's up to the noise (the devices' random
    streams differ), and a resumed GPU run equals the straight one."""
    args = (f"method={method}", "trainer.max_samples=3e4", "trainer.n_models=2")
    _, cpu = run_training(tmp_path, "cpu", *args, "device=cpu", data_root=shared_data)
    _, gpu = run_training(tmp_path, "gpu", *args, "device=cuda", data_root=shared_data)
    assert [(r["samples"], r["model"]) for r in cpu] == [(r["samples"], r["model"]) for r in gpu]
    for a, b in zip(cpu[-2:], gpu[-2:]):  # the last evaluation of both models
        assert abs(a["test_bound"] - b["test_bound"]) < 8, (a["test_bound"], b["test_bound"])
    straight_and_resumed(tmp_path / "resume", f"method={method}", "device=cuda", data_root=shared_data)
