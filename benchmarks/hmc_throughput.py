"""Datapoints per second of the batched HMC kernel and of an MCEM step, against a per-datapoint loop.

The model is Fig. 3's: MNIST-sized Bernoulli decoder, N_z = 3, 100 tanh hidden units (AEVB §5),
with random weights and random binary x (the speed does not depend on the values). At batch sizes
100 and 1000 it times, side by side in one run:
- the HMC kernel: one `hmc_step` of 10 leapfrog steps (AEVB App. E) over a batch of chains, one per
  datapoint, against the same `hmc_step` called once per datapoint in a Python loop;
- an MCEM step (`methods.take_step` of `methods.mcem`: the E-step above plus 5 Adagrad updates of theta), against
  the same step with its E-step run datapoint by datapoint.
The ratio batched / loop is the figure (the issue's target: >= 20x for the kernel at batch 100).
Usage: python benchmarks/hmc_throughput.py [--threads 1] [--keep-denormals] [--repeats 3]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
import time

import torch
from train_throughput import parse_cpu_args

from vae_cli.estimators import map_objective
from vae_cli.hmc import adapt_step_size, hmc_step, init_state
from vae_cli.methods import Minibatch, take_step
from vae_cli.methods import mcem
from vae_cli.models import build_vae
from vae_cli.optim import ascend

DATA_DIM, LATENT_DIM, HIDDEN, N_LEAPFROG, N_WEIGHT_UPDATES = 784, 3, [100], 10, 5  # AEVB §5, App. E


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def kernel_batched(model, x, z, step, g):
    def log_prob(v):
        return model.log_joint(x, v)

    state = init_state(z, log_prob)
    return lambda: hmc_step(state, log_prob, step, N_LEAPFROG, g)


def kernel_loop(model, x, z, step, g):
    """The same kernel, one chain per call: what the code would be without batching."""
    per_point = []
    for i in range(x.shape[0]):
        def log_prob(v, xi=x[i : i + 1]):
            return model.log_joint(xi, v)

        per_point.append((init_state(z[i : i + 1], log_prob), log_prob))

    def run():
        for i, (state, log_prob) in enumerate(per_point):
            hmc_step(state, log_prob, step[i : i + 1], N_LEAPFROG, g)

    return run


def mcem_method(model, n_train: int, g):
    cfg = argparse.Namespace(
        seed=0,
        method=argparse.Namespace(n_leapfrog=N_LEAPFROG, n_weight_updates=N_WEIGHT_UPDATES, target_accept=0.9,
                                  init_step_size=0.1, jitter=0.2),
        optimizer=argparse.Namespace(name="adagrad", lr=0.02, eps=1e-10, initial_accumulator_value=0.0, warmup_steps=0),
        prior=argparse.Namespace(scope="weights", precision=1.0),
        trainer=argparse.Namespace(on_nan="stop"),
    )
    return mcem.build(cfg, model, n_train, torch.device("cpu"), torch.Generator().manual_seed(3))


def mcem_loop_step(method, x, idx, g):
    """An MCEM step whose E-step runs chain by chain; the M-step stays batched."""
    for k in range(x.shape[0]):
        i = idx[k : k + 1]

        def log_prob(v, xi=x[k : k + 1]):
            return method.model.log_joint(xi, v)

        state, info = hmc_step(init_state(method.z[i], log_prob), log_prob, method.step_size[i], N_LEAPFROG, g, method.jitter)
        method.z[i] = state.z
        method.step_size[i] = adapt_step_size(method.step_size[i], info.accept_prob, method.target_accept)
    for _ in range(method.n_weight_updates):  # the M-step, as the method's update runs it
        terms = method.model.log_joint(x, method.z[idx])
        ascend(map_objective(terms, method.n_train), method.optimizers["theta"], method.schedules["theta"], False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_cpu_args(parser)
    g = torch.Generator().manual_seed(0)
    model = build_vae(DATA_DIM, SimpleNamespace(latent_dim=LATENT_DIM, hidden=HIDDEN, decoder="bernoulli", init_std=0.1,
                                                encoder_log_var_scale=1.0, encoder_log_var_init="random", decoder_variance="data_dependent",
                                                decoder_uniform_mixture=False, decoder_min_log_var=None), g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.subnormals}; decoder {LATENT_DIM}-{HIDDEN[0]}-{DATA_DIM}, "
          f"{N_LEAPFROG} leapfrog steps, {N_WEIGHT_UPDATES} weight updates; datapoints/s (best of {args.repeats})")
    print(f"{'what':<34}{'batch':>6}{'batched':>12}{'loop':>12}{'ratio':>9}")
    for batch in (100, 1000):
        x = torch.bernoulli(torch.full((batch, DATA_DIM), 0.5), generator=g)
        z = torch.randn(batch, LATENT_DIM, generator=g)
        step = torch.full((batch,), 0.1)
        batched = batch / best_time(kernel_batched(model, x, z, step, g), args.repeats)
        loop = batch / best_time(kernel_loop(model, x, z, step, g), args.repeats)
        print(f"{'HMC kernel (one hmc_step)':<34}{batch:>6}{batched:>12,.0f}{loop:>12,.0f}{batched / loop:>8.1f}x")
        method = mcem_method(model, batch, g)
        idx = torch.arange(batch)
        batched = batch / best_time(lambda: take_step(method, Minibatch(x, idx), g), args.repeats)
        loop = batch / best_time(lambda: mcem_loop_step(method, x, idx, g), args.repeats)
        print(f"{'MCEM step (E-step + 5 updates)':<34}{batch:>6}{batched:>12,.0f}{loop:>12,.0f}{batched / loop:>8.1f}x")


if __name__ == "__main__":
    main()
