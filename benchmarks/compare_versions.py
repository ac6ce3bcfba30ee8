"""This version's training rates against an earlier version's, in one sitting on one machine.

Runs `train_throughput.py` (eager and compiled step, M = 100) and `n_models_throughput.py` (stacks of
K = 4 and 16, one thread) of each version in turn, alternating which goes first, and prints the median
rate of each side and their ratio. The earlier version is a checkout with its own environment:

    git worktree add ../vae-cli-before <commit> && python -m venv ../before-venv
    ../before-venv/bin/pip install torch==2.13.0 -e ../vae-cli-before
    python benchmarks/compare_versions.py --before ../vae-cli-before --before-python ../before-venv/bin/python

Needs the data (VAE_CLI_DATA). Rates are datapoints per second per model.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_RATE = re.compile(r"^  (vae-cli(?: compiled)?)\s+([\d,]+) datapoints/s", re.M)
STACK_RATE = re.compile(r"^\s+(\d+)\s+([\d,]+)\s+[\d,]+", re.M)


def rates(python: str, benchmarks: Path, rounds: int, seconds: float | None) -> dict[str, float]:
    """One sitting of one version: its benchmark scripts in child processes, their rates parsed."""
    def run(script: str, *args: str) -> str:
        done = subprocess.run([python, str(benchmarks / script), *args], capture_output=True, text=True, cwd=benchmarks)
        if done.returncode != 0:
            sys.exit(f"compare_versions: {benchmarks / script} failed: {done.stderr.strip().splitlines()[-1:]}")
        return done.stdout

    timing = ["--rounds", str(rounds), *(["--seconds", str(seconds)] if seconds else [])]
    out = run("train_throughput.py", "--batch-sizes", "100", *timing, "--no-rss")
    found = {f"{name} step": float(rate.replace(",", "")) for name, rate in STEP_RATE.findall(out)}
    out = run("n_models_throughput.py", "--models", "4", "16", "--threads", "1", "--rounds", str(rounds), "--seconds", str(seconds or 0.5))
    found.update({f"stack of K = {k}": float(rate.replace(",", "")) for k, rate in STACK_RATE.findall(out)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier version's checkout")
    parser.add_argument("--before-python", required=True, help="the Python of the earlier version's environment")
    parser.add_argument("--sittings", type=int, default=4, help="sittings per side (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per sitting (default 3)")
    parser.add_argument("--seconds", type=float, help="time per implementation per round (default: the step's own, 0.5 for stacks)")
    args = parser.parse_args()
    sides = {"before": (args.before_python, args.before.resolve() / "benchmarks"), "after": (sys.executable, HERE)}
    found: dict[tuple[str, str], list[float]] = {}
    for sitting in range(args.sittings):
        for side in ("before", "after") if sitting % 2 == 0 else ("after", "before"):
            for name, value in rates(*sides[side], args.rounds, args.seconds).items():
                found.setdefault((side, name), []).append(value)
        print(f"sitting {sitting + 1} of {args.sittings} done", flush=True)
    print(f"\n{args.sittings} sittings of {args.rounds} rounds a side; median datapoints/s per model")
    for name in sorted({n for _, n in found}):
        before, after = (statistics.median(found.get((side, name), [float("nan")])) for side in ("before", "after"))
        print(f"  {name:<22} before {before:>9,.0f}   after {after:>9,.0f}   after / before {after / before:.2f}")


if __name__ == "__main__":
    main()
