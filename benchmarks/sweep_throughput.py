"""Sweep throughput: the same two-run sweep through Hydra's basic launcher and through joblib.

The basic launcher runs the jobs one after the other, each with torch's default threads (all
cores); `hydra/launcher=joblib` (n_jobs=-1, loky processes) runs one process per core, and loky
limits each worker to cores / processes threads (here 2 x 1 on 2 cores). Both sweeps are the real
`vae-train --multirun` command (the paper's MNIST model, two seeds), timed end to end, alternating
over rounds; medians reported with the ratio.

Each job also pays a fixed cost that no launcher shares out: importing torch (about 2.7 s here),
loading MNIST and evaluating; loky's workers import everything once more. At 10^5 samples a job
that is about half of its time, so the default is 3*10^5 samples, still 300x shorter than a Fig. 2 job.

Usage: python benchmarks/sweep_throughput.py [--samples 3e5] [--rounds 2] [--jobs 2]
Needs the data (VAE_CLI_DATA) and the [cluster] extra (hydra-joblib-launcher).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "vae-train"


def sweep(launcher: str, jobs: int, samples: float, folder: Path) -> tuple[float, list[float]]:
    """Wall seconds of one sweep and the training rate (samples/s) each job measured itself."""
    seeds = ",".join(str(s) for s in range(jobs))
    args = [str(SCRIPT), "--multirun", f"seed={seeds}", f"trainer.max_samples={samples}", "evaluation.per_decade=1",
            "evaluation.train_points=1000", "evaluation.test_points=1000", "trainer.figures=false",
            "trainer.progress=false", f"hydra.sweep.dir={folder}"]
    if launcher == "joblib":
        args.append("hydra/launcher=joblib")
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rates = []
    for metrics in sorted(folder.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rates.append(rows[-1]["samples"] / rows[-1]["wall_seconds"])
    return wall, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=float, default=3e5, help="training samples per job")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not os.environ.get("VAE_CLI_DATA"):
        sys.exit("set VAE_CLI_DATA to the folder with mnist.pkl.gz")
    walls: dict[str, list[float]] = {"basic": [], "joblib": []}
    rates: dict[str, list[float]] = {"basic": [], "joblib": []}
    scratch = Path(tempfile.mkdtemp(prefix="vae-sweep-bench-"))
    try:
        for r in range(args.rounds):
            for launcher in ("basic", "joblib"):
                wall, job_rates = sweep(launcher, args.jobs, args.samples, scratch / f"{launcher}-{r}")
                walls[launcher].append(wall)
                rates[launcher] += job_rates
                print(f"round {r}: {launcher:<6} {wall:7.1f} s  (jobs' own rates: {', '.join(f'{x:,.0f}' for x in job_rates)} samples/s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    basic, joblib = statistics.median(walls["basic"]), statistics.median(walls["joblib"])
    print(f"\n{args.jobs} jobs of {args.samples:.0e} samples, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"  {'one after the other (basic launcher, all threads each):':<55}{basic:7.1f} s")
    print(f"  {f'side by side (joblib, {args.jobs} processes):':<55}{joblib:7.1f} s")
    print(f"  speed-up of the sweep: {basic / joblib:.2f}x")


if __name__ == "__main__":
    main()
