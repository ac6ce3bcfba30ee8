"""speed.n_models=K: a stack of K models trains model k as a separate run with seed s + k.

`accel/stack.py` stacks the K models' parameters (torch.func.stack_module_state), draws each model's
minibatch and noise outside any transform from that model's own generators, and vmaps the method's
terms and their gradient over the stack. Steps of a stack are checked against K single learners
without data; on real MNIST a stack of 3 is checked against the 3 separate runs (weights and metrics
rows), for AEVB and wake-sleep, with minibatches drawn with replacement (the default) and by epochs;
then resume, vae-eval member=k and vae-report. The batched matrix products of the stack sum in
another order than a single model's, so the comparisons hold to float32 rounding (grown over the
steps), not bit for bit; the issue's "bounds within noise" follows and is asserted too.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose_config
from helpers import run_training, straight_and_resumed, without_wall_clock
from vae_cli.accel.stack import StackLearner
from vae_cli.config import validate
from vae_cli.data import Dataset
from vae_cli.errors import UserError
from vae_cli.jobs.evaluate import evaluate as vae_eval
from vae_cli.jobs.report import report
from vae_cli.jobs.train import build_learner
from vae_cli.methods import METHODS
from vae_cli.runs import config_differences, load_checkpoint
from vae_cli.sweep import load_sweep

SEED, K = 5, 3
CPU = torch.device("cpu")
# One to three steps on the small models below: a float32 product of the stack (bmm under vmap) and the
# single model's (mm) may round each sum differently, a few ulp (eps = 1.2e-7) of its largest terms; Adagrad
# divides such a gradient by the root of its own square, so the relative error passes to the update about
# unchanged. 1e-5 relative (~100 ulp) with an absolute floor of 1e-6 for entries near 0 leaves room for that
# and fails at once for any real mismatch (another seed, minibatch or noise draw moves entries by ~1e-1).
ONE_STEP = {"rtol": 1e-5, "atol": 1e-6}
# 20 steps on MNIST (10 past Adagrad's warm-up, at bounds that still jump by hundreds of nats between
# evaluations): the per-step rounding above grows along the trajectory; measured 2e-6 to 2e-5 in norm
# relative to each weight tensor (and in the bounds). A run of another seed differs by ~1 in that norm.
RUN_WEIGHTS = 1e-4  # |w_stack - w_single| / |w_single| per tensor
RUN_BOUNDS = 1e-4  # relative, per float field of a metrics row


def _small(overrides: list[str], seed: int, n_models: int = 1):
    return compose_config(["model.hidden=[16]", "model.latent_dim=3", "model.init_std=0.3", "trainer.batch_size=8",
                           "optimizer.warmup_steps=0", *overrides, f"seed={seed}", f"speed.n_models={n_models}"])


@pytest.mark.parametrize("overrides,binarize", [
    (["estimator=sgvb_a", "estimator.n_samples=2"], "none"),
    (["method=wake_sleep"], "none"),
    (["model=linear_gaussian", "model.latent_dim=2", "prior.scope=all"], "none"),  # a non-Linear parameter, biases in p(theta)
    (["trainer.minibatches=epochs", "optimizer=adam"], "dynamic"),  # per-model permutations and binarization draws
], ids=["aevb-sgvb_a", "wake_sleep", "linear_gaussian", "epochs-dynamic-adam"])
def test_steps_of_a_stack_are_the_steps_of_each_models_separate_run(overrides, binarize):
    """Each model's own minibatches and noise, objective with M per model, p(theta) per model, one
    elementwise optimizer over the stacked parameters: model k after 3 steps is the run of seed s + k."""
    cfg = _small(overrides, SEED)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 12, generator=g) if cfg.model.decoder == "bernoulli" else torch.randn(40, 12, generator=g)
    data = Dataset("mnist", x, x[:10], x, (3, 4), binarize)
    stack = StackLearner(_small(overrides, SEED, K), data, CPU)
    singles = [build_learner(_small(overrides, SEED + k), data, CPU) for k in range(K)]
    initial = [{n: t.clone() for n, t in s.method.model.state_dict().items()} for s in singles]
    assert all(p.shape[0] == K for p in stack.holder.parameters())
    for _ in range(3):  # the later updates use the optimizer state of the first
        shown, bad = stack.step()
        assert shown.shape == (K, 8) and not bad.item()
        for k, single in enumerate(singles):
            torch.testing.assert_close(shown[k], single.step().shown, **ONE_STEP)
    for k, (member, single) in enumerate(zip(stack.members(), singles, strict=True)):
        assert member.offset == k
        for name, tensor in member.model.state_dict().items():
            torch.testing.assert_close(tensor, single.method.model.state_dict()[name], **ONE_STEP, msg=name)
            assert not torch.equal(tensor, initial[k][name]), f"{name} did not move"
    state = stack.state_dict()
    assert all(s.shape[0] == K for s in state["rng"].values()) and len(state["sampler"]) == K


@pytest.mark.parametrize("overrides,needle", [
    (["speed.n_models=0"], "speed.n_models=0 must be positive"),
    (["method=mcem", "speed.n_models=3", "seed=4"],
     "speed.n_models=3: method=mcem cannot be stacked; run the seeds as separate jobs: speed.n_models=1 seed=4,5,6 --multirun"),
    (["method=full_vb", "speed.n_models=2"], "speed.n_models=2: method=full_vb cannot be stacked"),
])
def test_n_models_out_of_range_or_with_an_unstackable_method_is_one_line(overrides, needle):
    with pytest.raises(UserError, match=needle) as error:
        validate(compose_config(overrides))
    assert "\n" not in str(error.value)


def test_only_aevb_and_wake_sleep_say_they_stack():
    assert {name for name, entry in METHODS.items() if entry.capabilities.stack} == {"aevb", "wake_sleep"}


def test_a_run_saved_before_n_models_existed_resumes_as_one_model():
    saved = {"trainer": {"batch_size": 100}, "seed": 0}
    assert config_differences(saved, {"trainer": {"batch_size": 100}, "speed": {"n_models": 1}, "seed": 0}) == []
    assert config_differences(saved, {"trainer": {"batch_size": 100}, "speed": {"n_models": 2}, "seed": 0}) == ["speed.n_models"]
    old_name = {"trainer": {"batch_size": 100, "n_models": 2}, "seed": 0}  # before the speed group
    assert config_differences(old_name, {"trainer": {"batch_size": 100}, "speed": {"n_models": 2}, "seed": 0}) == []


RUN = ("dataset.n_train=1000", "trainer.max_samples=2e3", "evaluation.first=1e3", "evaluation.train_points=300",
       "evaluation.test_points=300", "dataset.binarize=dynamic", "estimator=sgvb_a")
CASES = {"aevb": [], "aevb-epochs": ["trainer.minibatches=epochs"], "wake_sleep": ["method=wake_sleep"],
         "wake_sleep-epochs": ["method=wake_sleep", "trainer.minibatches=epochs"]}


@pytest.fixture(scope="module")
def stack_and_singles(tmp_path_factory, shared_data):
    """`runs(case)`: a stack of 3 with seed=5 and the three separate runs of seeds 5, 6, 7, all under one
    folder of that case (run once per module)."""
    root, made = tmp_path_factory.mktemp("n_models"), {}

    def runs(case: str):
        if case not in made:
            folder, extra = root / case, CASES[case]
            _, stack = run_training(folder, "stack", *RUN, *extra, f"speed.n_models={K}", f"seed={SEED}", data_root=shared_data)
            singles = [run_training(folder, f"seed{SEED + k}", *RUN, *extra, f"seed={SEED + k}", data_root=shared_data)[1]
                       for k in range(K)]
            made[case] = folder, stack, singles
        return made[case]

    return runs


@pytest.mark.parametrize("case", list(CASES))
def test_model_k_of_a_stack_equals_the_separate_run_of_seed_s_plus_k(stack_and_singles, case):
    root, stack, singles = stack_and_singles(case)
    stacked = load_checkpoint(root / "stack" / "checkpoints" / "last.pt")
    assert stacked["model"]["encoder.net.hidden.0.weight"].shape == (K, 500, 784)
    for k, rows in enumerate(singles):
        single = load_checkpoint(root / f"seed{SEED + k}" / "checkpoints" / "last.pt")
        assert stacked["model"].keys() == single["model"].keys()
        for name, tensor in single["model"].items():
            error = (stacked["model"][name][k] - tensor).norm() / tensor.norm()
            assert error < RUN_WEIGHTS, (name, k, error.item())
        mine = [r for r in without_wall_clock(stack) if r["model"] == k]
        assert all(r.pop("model") == k and r.pop("seed") == SEED + k for r in mine)
        assert [r["samples"] for r in mine] == [r["samples"] for r in rows] == [0, 1000, 1800, 2000]
        for a, b in zip(mine, without_wall_clock(rows)):
            assert a.keys() == b.keys() - {"train_bound_running"}  # a stack's rows carry no running minibatch bound
            for key, value in a.items():
                if isinstance(value, float):
                    assert value == pytest.approx(b[key], rel=RUN_BOUNDS), key
                else:
                    assert value == b[key], key
            # the weaker check, which the above implies: bounds within noise of the separate run's
            assert abs(a["test_bound"] - b["test_bound"]) < 3 * math.hypot(a["test_bound_se"], b["test_bound_se"])
    assert [r["model"] for r in stack] == list(range(K)) * 4  # K rows per evaluation, in model order


def test_vae_eval_member_k_evaluates_model_k_and_refuses_a_model_the_run_lacks(stack_and_singles, capsys):
    root, _, _ = stack_and_singles("aevb")
    ask = lambda run, *extra: compose_config([f"run_dir={root / run}", "likelihood=elbo", "likelihood.n_samples=10", "n_points=50", *extra], "eval")  # noqa: E731
    ours = vae_eval(ask("stack", "member=1"))
    theirs = vae_eval(ask(f"seed{SEED + 1}"))
    assert ours["log_px"] == pytest.approx(theirs["log_px"], rel=RUN_BOUNDS)  # the weights agree to RUN_WEIGHTS
    assert (ours["member"], ours["member_seed"], ours["n_models"]) == (1, SEED + 1, K) and "member" not in theirs
    assert ours["paths"][".json"].endswith("elbo-test-member1-001.json")
    assert vae_eval(ask("stack"))["member"] == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.split()[-3:] == ["member", "of", "seed"]
    with pytest.raises(UserError, match="this run holds one model: use member=0"):
        vae_eval(ask(f"seed{SEED}", "member=1"))
    with pytest.raises(UserError, match="not a model of this run's stack of 3"):
        vae_eval(ask("stack", "member=3"))


def test_vae_report_reads_a_stack_as_k_seeds_of_the_group_of_its_config(stack_and_singles):
    """A stack of seeds 5..7 is read as three runs of those seeds, in one group with the separate runs of
    the same config (where each seed, found twice, counts once); its curve is theirs to RUN_BOUNDS."""
    root, _, _ = stack_and_singles("aevb")
    sweep = load_sweep(root)
    assert sorted((r.path.name, r.member, r.seed) for r in sweep.runs) == [
        ("seed5", None, 5), ("seed6", None, 6), ("seed7", None, 7), ("stack", 0, 5), ("stack", 1, 6), ("stack", 2, 7)]
    (group,) = sweep.groups
    assert sorted(group.seeds) == [5, 6, 7] and sorted(d.seed for d in sweep.duplicates) == [5, 6, 7]
    (stack,) = load_sweep(root / "stack").groups
    assert sorted((r.member, r.seed) for r in stack.runs) == [(0, 5), (1, 6), (2, 7)]
    points, reference = stack.points("test_bound"), group.points("test_bound")
    assert [p.samples for p in points] == [p.samples for p in reference] == [0, 1000, 1800, 2000]
    for ours, theirs in zip(points, reference):
        assert ours.seeds == theirs.seeds == 3 and ours.low < ours.mean < ours.high
        assert (ours.mean, ours.low, ours.high) == pytest.approx((theirs.mean, theirs.low, theirs.high), rel=RUN_BOUNDS)
    made = report(root)
    assert (made["runs"], made["drawn"], len(made["duplicates"])) == (6, 3, 3)


@pytest.mark.parametrize("extra", [[], ["trainer.minibatches=epochs"]], ids=["with_replacement", "epochs"])
def test_a_stack_resumes_exactly(tmp_path, shared_data, extra):
    """Straight to 6000 samples == 3000, then resumed to 6000, bit for bit: weights, metrics, and each
    model's sampler and random streams."""
    args = ("speed.n_models=2", "dataset.n_train=1500", "evaluation.first=1e3", "trainer.checkpoint_every=1e3",
            "evaluation.train_points=300", "evaluation.test_points=300", "dataset.binarize=dynamic", *extra)
    a, b = straight_and_resumed(tmp_path, *args, data_root=shared_data)
    assert len(a["sampler"]) == len(b["sampler"]) == 2
    for ours, theirs in zip(a["sampler"], b["sampler"]):
        assert ours["position"] == theirs["position"]
        if extra:
            assert ours["permutation"].shape == (1500,) and torch.equal(ours["permutation"], theirs["permutation"])
        else:
            assert ours["permutation"] is None is theirs["permutation"]
    if extra:
        assert not torch.equal(a["sampler"][0]["permutation"], a["sampler"][1]["permutation"])  # each model its own order
    for name in ("data", "noise", "chains"):
        assert a["rng"][name].shape[0] == 2 and torch.equal(a["rng"][name], b["rng"][name]), name
    assert not torch.equal(a["rng"]["noise"][0], a["rng"]["noise"][1])
