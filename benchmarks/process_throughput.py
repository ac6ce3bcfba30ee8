"""Whole processes: `vae-train` with its defaults against the hand-written loops, start to end.

Each round runs, one after another, four fresh processes that train the paper's MNIST model (784-500-20,
SGVB B, L = 1, Adagrad, M = 100) for the same number of training samples (default 3·10^5) and time
them from start to exit (imports, data, training, evaluations, files):
- `examples`: the pytorch/examples-style loop of `train_throughput.py`, then the test bound once;
- `lean`: the hand-written loop of `train_throughput.py` (the same math as vae-cli), then the test bound once;
- `vae-train`: the console script with its defaults (the author's choices; evaluations of the train subset
  and the whole test set on the log schedule, checkpoints, figures);
- `vae-train compiled`: the same with `speed.compile=true` (compilation included).
Rounds interleave the four, so a machine whose speed drifts moves all of them together.

Usage: python benchmarks/process_throughput.py [--samples 3e5] [--rounds 3] [--threads 2]
Prints each median wall time and vae-train's time over the examples loop's (target: <= 1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOP = """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads({threads})
import train_throughput as T
from vae_cli.data import load_dataset
from vae_cli.evaluation import evaluate_bound
from vae_cli.models import build_vae
cfg = T.train_config()
data = load_dataset(cfg.dataset, torch.device("cpu"))
step = T.{runner}(data.train, 100)
for _ in range(int({samples}) // 100):
    step()
model = build_vae(784, cfg.model, torch.Generator().manual_seed(0))  # the cost of the test bound once (same shapes)
print(evaluate_bound(model, data.test, "sgvb_b", 1, 1000, torch.Generator().manual_seed(0)).mean)
"""


def reference(runner: str, samples: float, threads: int) -> list[str]:
    return [sys.executable, "-c", LOOP.format(here=str(HERE), threads=threads, runner=runner, samples=samples)]


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if out.returncode:
        sys.exit(f"{args[0]} failed: {out.stderr.strip().splitlines()[-1][:300]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=float, default=3e5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not os.environ.get("VAE_CLI_DATA"):
        sys.exit("process_throughput needs the MNIST files: set VAE_CLI_DATA to a folder with mnist.pkl.gz")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    script = str(Path(sys.executable).parent / "vae-train")
    times: dict[str, list[float]] = {"examples": [], "lean": [], "vae-train": [], "vae-train compiled": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            train = [script, f"trainer.max_samples={args.samples:g}", "trainer.progress=false", f"speed.threads={args.threads}"]
            runs = {"examples": reference("examples_runner", args.samples, args.threads),
                    "lean": reference("lean_runner", args.samples, args.threads),
                    "vae-train": [*train, f"hydra.run.dir={folder}/eager{r}"],
                    "vae-train compiled": [*train, "speed.compile=true", f"hydra.run.dir={folder}/compiled{r}"]}
            for name, command in runs.items():
                times[name].append(timed(command, env))
    print(f"{args.samples:g} samples of the MNIST model, {args.threads} threads, {args.rounds} interleaved rounds; median wall seconds")
    for name, values in times.items():
        print(f"  {name:<20} {statistics.median(values):7.1f} s  (rounds {min(values):.1f}-{max(values):.1f})")
    ratio = statistics.median(times["vae-train"]) / statistics.median(times["examples"])
    print(f"  vae-train / examples loop: {ratio:.2f}  target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}")
    print(f"  vae-train / lean loop:     {statistics.median(times['vae-train']) / statistics.median(times['lean']):.2f}")


if __name__ == "__main__":
    main()
