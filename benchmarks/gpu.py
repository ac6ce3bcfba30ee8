"""On a GPU: the training step's speed, IWAE over the test set, a run beside its CPU twin, and the paper's budget.

One call, in this order (each part appends its lines to OUT/gpu.txt as it finishes, so a time-out still
leaves the numbers of the parts done):
(a) datapoints/s of the MNIST N_z = 20 AEVB step at M = 100 (vae-train's defaults): eager, captured
    (`speed.compile=true`: one compiled graph per update, replayed as a CUDA graph), and stacks of
    K = 1, 4, 16 seeds (`speed.n_models`, eager and compiled), each beside the matmul roofline of the
    step's GEMMs measured in the same run;
(b) IWAE, k = 5000, over the 10,000 MNIST test points of a fresh model (seconds);
(c) a 10^6-sample run (`vae-train`, seed 0) on the device and the same run on the CPU: both end bounds;
(d) the paper's budget: AEVB, MNIST, N_z = 20, 10^8 samples, compiled, on the device: its wall time and end
    bounds beside the paper's 10^8 column; its metrics.jsonl is copied to OUT as it grows.

Usage: python benchmarks/gpu.py --out DIR [--device cuda] [--budget 480] [--tiny]
`--tiny` (with `--device cpu`, as the test suite runs it) takes every part at small sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import gemm_runner, mnist_or_noise, rate, train_config, vae_cli_runner  # noqa: E402

PAPER_1E8 = {"train": -98.2, "test": -100.2}  # AEVB, MNIST, N_z = 20 at 10^8 samples (Fig. 2, digitized)


class Report:
    def __init__(self, out: Path):
        self.path = out / "gpu.txt"
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def step_speeds(args, say: Report) -> None:
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    train_x, _, _ = mnist_or_noise(2_000 if args.tiny else 50_000)
    gemm, flops = gemm_runner(100, device)
    bound = rate(gemm, 100, args.seconds, sync)
    say(f"(a) M = 100 step, MNIST N_z = 20, {device}; matmul roofline of the step's GEMMs: {bound:,.0f} datapoints/s "
        f"({bound * flops / 100 / 1e9:.0f} GFLOP/s)")
    for label, compiled, k in [("eager", False, 1), ("captured", True, 1), *[(f"stack K={k}", False, k) for k in (1, 4, 16)],
                               *[(f"stack K={k} compiled", True, k) for k in (4, 16)]]:
        if args.tiny and k > 4:
            continue
        cfg = train_config(f"speed.compile={str(compiled).lower()}")
        start = time.perf_counter()
        try:
            step = vae_cli_runner(train_x, cfg, 100, n_models=k, device=device)
            step()
            sync()
            compile_s = time.perf_counter() - start
            value = rate(step, 100 * k, args.seconds, sync)
        except Exception as e:  # noqa: BLE001 - a part that fails is reported and the script goes on
            say(f"    {label:<22} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        say(f"    {label:<22} {value:>12,.0f} datapoints/s in total  ({value / k:,.0f} per model; {value / (k * bound):.2f} of the "
            f"roofline per model; first step {compile_s:.1f} s)")


def iwae_seconds(args, say: Report) -> None:
    from vae_cli.jobs.train import build_learner
    from vae_cli.data import Dataset
    from vae_cli.likelihood.importance import IWAESettings, iwae

    n, k = (100, 50) if args.tiny else (10_000, 5000)
    test_x, _, _ = mnist_or_noise(n)
    test_x = test_x.to(args.device)
    model = build_learner(train_config(), Dataset("mnist", test_x, test_x, test_x, (28, 28), "none"), torch.device(args.device)).members()[0].model
    generator = torch.Generator(device=args.device).manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        values = torch.cat([iwae(model, batch, IWAESettings(k=k), generator).log_px for batch in test_x.split(100)])
    if args.device == "cuda":
        torch.cuda.synchronize()
    say(f"(b) IWAE k={k} over {n} test points: {time.perf_counter() - start:.1f} s (a fresh model: {values.mean():.2f} nats)")


def vae_train(args, out: Path, device: str, samples: float, *extra: str) -> tuple[dict | None, float]:
    """A vae-train run in OUT/<name>; its last metrics row (None if it ended first) and its wall seconds."""
    run = out / f"run_{device}_{samples:g}"
    shutil.rmtree(run, ignore_errors=True)
    command = [str(Path(sys.executable).parent / "vae-train"), f"trainer.max_samples={samples:g}", f"device={device}", "seed=0",
               "trainer.progress=false", "trainer.figures=false", f"hydra.run.dir={run}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}, seconds
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1], seconds


def twins(args, say: Report, out: Path) -> None:
    samples = 2e4 if args.tiny else 1e6
    gpu, gpu_s = vae_train(args, out, args.device, samples)
    cpu, cpu_s = vae_train(args, out, "cpu", samples)
    for name, row, seconds in ((args.device, gpu, gpu_s), ("cpu", cpu, cpu_s)):
        if "error" in row:
            say(f"(c) {samples:g} samples on {name}: failed: {row['error']}")
        else:
            say(f"(c) {samples:g} samples on {name:<4}: train {row['train_bound']:.2f} / test {row['test_bound']:.2f} in {seconds:.0f} s")


def paper_budget(args, say: Report, out: Path) -> None:
    samples = 5e4 if args.tiny else 1e8
    run = out / "paper_scale"
    shutil.rmtree(run, ignore_errors=True)
    command = [str(Path(sys.executable).parent / "vae-train"), f"trainer.max_samples={samples:g}", f"device={args.device}",
               "speed.compile=true", "trainer.progress=false", f"hydra.run.dir={run}", "trainer.checkpoint_every=1e7"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    deadline = start + args.budget
    while child.poll() is None and time.perf_counter() < deadline:
        time.sleep(5)
        if (run / "metrics.jsonl").is_file():
            shutil.copy(run / "metrics.jsonl", out / "paper_scale_metrics.jsonl")
    if child.poll() is None:
        child.terminate()  # SIGTERM: it saves a checkpoint and stops
        child.wait(120)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    if not rows:
        say(f"(d) paper budget: no evaluation within {seconds:.0f} s ({child.stderr.read().strip()[-300:]})")
        return
    last = rows[-1]
    say(f"(d) AEVB MNIST N_z=20, {last['samples']:.3g} of {samples:g} samples in {seconds:.0f} s "
        f"({last['samples'] / seconds:,.0f} samples/s overall): train {last['train_bound']:.2f} / test {last['test_bound']:.2f}; "
        f"the paper at 1e8: {PAPER_1E8['train']} / {PAPER_1E8['test']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=240, help="seconds for part (d)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per speed measurement")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--parts", default="abcd")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the child vae-train processes run elsewhere
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device visible to torch; run it on a GPU machine, or with --device cpu --tiny to check it")
    say = Report(args.out)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    say(f"torch {torch.__version__} on {name}; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for part, fn in (("a", lambda: step_speeds(args, say)), ("b", lambda: iwae_seconds(args, say)),
                     ("c", lambda: twins(args, say, args.out)), ("d", lambda: paper_budget(args, say, args.out))):
        if part in args.parts:
            fn()


if __name__ == "__main__":
    main()
