"""Training throughput of a stack of K models (`speed.n_models=K`) against K separate runs' steps.

For each K, two things are timed side by side in one process, interleaved over rounds (rates:
medians; ratios: the median of each round's ratio, with its range), at the paper's MNIST model
(784-500-20, tanh, Bernoulli decoder, SGVB B, L = 1, Adagrad), both on the package's own code
path (`train_throughput.vae_cli_runner`: `jobs.train.build_learner` and `Learner.step`, exactly
what `vae-train` runs per step):

- `stack`: one step of a stack of K models (seeds 0..K-1): the method vmapped over the stacked
  parameters (`accel/stack.py`);
- `separate`: one step of each of K single-model runs (seeds 0..K-1), one after another, as K
  separate jobs on the same cores would take turns.

Both process K x M datapoints per call. Usage:
python benchmarks/n_models_throughput.py [--models 1 4 16] [--batch-size 100] [--rounds 8] [--threads N]
Prints datapoints/s per model (one model's training samples per second) and the ratio stack / separate
with its target (1.0x on a CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from train_throughput import D, H, J, interleaved_rates, mnist_or_noise, parse_timing_args, per_round_ratio, vae_cli_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=100)
    args = parse_timing_args(parser, rounds=8)
    train_x, cfg, _ = mnist_or_noise(50_000)
    M = args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, {args.subnormals}; "
          f"MNIST model {D}-{H}-{J}, "
          f"Adagrad, SGVB B, L=1, M={M}; {args.rounds} interleaved rounds, median rates, ratios per round")
    print(f"{'K':>3} {'stack dp/s per model':>21} {'separate dp/s per model':>24} {'stack / separate':>17}")
    for k in args.models:
        stack = vae_cli_runner(train_x, cfg, M, n_models=k)
        singles = [vae_cli_runner(train_x, cfg, M, seed=s) for s in range(k)]
        runners = {"stack": stack, "separate": lambda: [step() for step in singles]}
        rates = interleaved_rates(runners, k * M, args.rounds, args.seconds)
        med = {name: statistics.median(r) / k for name, r in rates.items()}  # per model
        print(f"{k:>3} {med['stack']:>21,.0f} {med['separate']:>24,.0f}   {per_round_ratio(rates, 'stack', 'separate', 'x', 1.0)}")


if __name__ == "__main__":
    main()
