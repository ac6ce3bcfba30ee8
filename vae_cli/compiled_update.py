"""`trainer.compile=true`: a whole update, AEVB's Algorithm 1 "g <- grad L~; theta, phi <- update" or a
wake-sleep phase, as one compiled graph.

The eager step runs the SGVB estimator, autograd's backward and the optimizer's kernel one after the
other, each a separate pass over memory with Python in between. Here `torch.func.grad` differentiates
the same objective (eq. (8) / N over the per-datapoint terms, `estimators.map_objective`) and the
optimizer's rule follows inside the same function, so torch.compile sees forward, backward and update
as one graph: inductor fuses the elementwise work around the matrix products (tanh and its
derivative, the Bernoulli terms, each bias gradient with its update), and no autograd engine,
optimizer loop or host sync runs in between (AEVB: 1.24-1.26x the eager step's datapoints/s at
M = 100 on a 2-core CPU, 0.65 of the step's GEMM bound against 0.53, `benchmarks/train_throughput.py`;
wake-sleep: 1.17-1.20x, `--method wake_sleep`).

The rules are torch.optim's Adagrad (AEVB §5), Adam and SGD written out. They read and write the
optimizer's own state tensors ("sum", "exp_avg", "exp_avg_sq", "momentum_buffer", "step"), so
checkpoints, resumes and an eager continuation find what torch.optim itself would have kept. The
divergence guard's check of every gradient is in the graph too: the update returns the flag for
`NonFiniteGuard.observe` and, with `trainer.on_nan=skip_batch`, a flagged update leaves parameters and
state as they were (as the fused kernels' `found_inf` does in the eager step). `eager_update` is the
same update without compilation, and `build_update` picks one of the two, so a method's step does
not branch on `trainer.compile`.

[Duchi2011] Duchi, Hazan, Singer, "Adaptive subgradient methods for online learning and stochastic
optimization", JMLR 2011 (the paper's Adagrad). [Kingma2014] Kingma, Ba, "Adam: a method for
stochastic optimization", arXiv:1412.6980.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import UserError
from .estimators import map_objective

State = dict[str, torch.Tensor]


def adagrad_rule(p: torch.Tensor, g: torch.Tensor, state: State, group: dict) -> tuple[torch.Tensor, State]:
    """Adagrad [Duchi2011] as torch.optim.Adagrad: G <- G + g^2, theta <- theta - lr_t g / (sqrt(G) + eps)."""
    step = state["step"] + 1
    total = state["sum"] + g * g
    lr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    return p - lr * g / (total.sqrt() + group["eps"]), {"sum": total, "step": step}


def adam_rule(p: torch.Tensor, g: torch.Tensor, state: State, group: dict) -> tuple[torch.Tensor, State]:
    """Adam [Kingma2014] as torch.optim.Adam: moving moments m, v with bias corrections 1 - beta^t."""
    beta1, beta2 = group["betas"]
    step = state["step"] + 1
    m = state["exp_avg"].lerp(g, 1 - beta1)
    v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    denom = v.sqrt() / (1 - beta2**step).sqrt() + group["eps"]
    return p - group["lr"] / (1 - beta1**step) * m / denom, {"exp_avg": m, "exp_avg_sq": v, "step": step}


def sgd_rule(p: torch.Tensor, g: torch.Tensor, state: State, group: dict) -> tuple[torch.Tensor, State]:
    """SGD as torch.optim.SGD (dampening 0): b <- mu b + g, theta <- theta - lr b; without momentum, lr g."""
    if group["momentum"] == 0:
        return p - group["lr"] * g, {}
    velocity = state["momentum_buffer"] * group["momentum"] + g
    return p - group["lr"] * velocity, {"momentum_buffer": velocity}


RULES: dict[type, Callable] = {torch.optim.Adagrad: adagrad_rule, torch.optim.Adam: adam_rule, torch.optim.SGD: sgd_rule}
UNSUPPORTED = {"maximize": False, "amsgrad": False, "nesterov": False, "dampening": 0}  # options the rules leave out


def init_state(optimizer: torch.optim.Optimizer) -> None:
    """Adam's state as its first eager step creates it (zero moments, step 0), so the graph can read it;
    every step counter on its parameter's device (torch keeps it on the host for foreach kernels on
    CUDA), so the graph never copies to the host."""
    for p in (p for group in optimizer.param_groups for p in group["params"]):
        state = optimizer.state[p]
        if isinstance(optimizer, torch.optim.Adam) and not state:
            state.update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        if "step" in state:
            state["step"] = state["step"].to(p.device)


Terms = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (model, *inputs) -> (objective's terms (M,), shown (M,))


class _Terms(nn.Module):
    """`terms(model, *inputs)` as a module call, so `torch.func.functional_call` can swap in parameters."""

    def __init__(self, model: nn.Module, terms: Terms):
        super().__init__()
        self.model, self.terms = model, terms

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.terms(self.model, *inputs)


def compiled_update(model: nn.Module, optimizer: torch.optim.Optimizer, terms: Terms, n_train: int,
                    skip: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`update(*inputs) -> (shown, found)`: one step of `optimizer`, over its parameters of `model` (the
    others held fixed), ascending the MAP objective of the per-datapoint terms `terms(model, *inputs)`
    returns with what to show, compiled; `found` is 1 where a gradient was non-finite (then, with
    `skip`, nothing changes). AEVB's terms are its SGVB bounds at the noise eps (`aevb.bounds_twice`)."""
    rule = RULES.get(type(optimizer))
    if rule is None:
        raise ValueError(f"trainer.compile=true has no update rule for {type(optimizer).__name__}; choose one of adagrad, adam, sgd")
    for group in optimizer.param_groups:
        for option, value in UNSUPPORTED.items():
            if group.get(option, value) != value:
                raise ValueError(f"trainer.compile=true does not implement {type(optimizer).__name__}'s {option}={group[option]}")
    terms_of = _Terms(model, terms)
    names = {id(p): f"model.{name}" for name, p in model.named_parameters()}
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    trained_ids = {id(p) for p in trained}
    held = [p for p in model.parameters() if id(p) not in trained_ids]  # e.g. phi in the wake phase

    def negative_objective(params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], *inputs: torch.Tensor):
        values, shown = torch.func.functional_call(terms_of, {**params, **fixed}, inputs)  # (M,) each
        return -map_objective(values, n_train), shown.detach()  # gradient ascent (Algorithm 1)

    def update(params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], states: dict[str, State], *inputs: torch.Tensor):
        grads, shown = torch.func.grad(negative_objective, has_aux=True)(params, fixed, *inputs)
        found = torch.stack([(~torch.isfinite(g)).any() for g in grads.values()]).any().float()
        keep = found > 0 if skip else torch.zeros((), dtype=torch.bool, device=found.device)
        for group in optimizer.param_groups:
            decay = group["weight_decay"]  # the weight prior p(theta) of the MAP objective (AEVB §5)
            for name in (names[id(p)] for p in group["params"]):
                p, state = params[name], states[name]
                g = grads[name] + decay * p if decay else grads[name]
                new_p, new_state = rule(p, g, state, group)
                p.copy_(torch.where(keep, p, new_p))
                for key, value in new_state.items():
                    state[key].copy_(torch.where(keep, state[key], value))
        return shown, found

    # Traced per model: without a reset, a process that trains run after run (a basic-launcher multirun,
    # a notebook) would keep one cache entry per run until torch's recompile limit stops it.
    torch.compiler.reset()
    fn = checked_compile(update, "trainer.compile", dynamic=False)
    started = False

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal started
        if not started:  # the first step, after any checkpoint's state was loaded
            init_state(optimizer)
            started = True
        # detached aliases: the graph writes the parameters' storage, outside autograd
        params = {names[id(p)]: p.detach() for p in trained}
        fixed = {names[id(p)]: p.detach() for p in held}
        states = {names[id(p)]: optimizer.state[p] for p in trained}
        return fn(params, fixed, states, *inputs)

    return run


def eager_update(model: nn.Module, optimizer: torch.optim.Optimizer, terms: Terms, n_train: int) -> Callable[..., tuple[torch.Tensor, None]]:
    """The eager twin of `compiled_update`: `update(*inputs) -> (shown, None)`, autograd's backward and
    the optimizer's own `step()` (whose pre-step hook is where the guard checks the gradients)."""

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, None]:
        values, shown = terms(model, *inputs)  # (M,) each
        objective = map_objective(values, n_train)  # eq. (8) / N (a stack: summed over models); + log p(theta) / N in the optimizer
        optimizer.zero_grad(set_to_none=True)
        (-objective).backward()  # gradient ascent (Algorithm 1)
        optimizer.step()
        return shown.detach(), None

    return run


def build_update(cfg, model: nn.Module, optimizer: torch.optim.Optimizer, terms: Terms, n_train: int) -> Callable:
    """The update of `optimizer` on `terms`, compiled when `trainer.compile` says so, else eager."""
    if cfg.trainer.compile:
        return compiled_update(model, optimizer, terms, n_train, skip=cfg.trainer.on_nan == "skip_batch")
    return eager_update(model, optimizer, terms, n_train)


def checked_compile(fn: Callable, option: str, **options) -> Callable:
    """`torch.compile(fn, fullgraph=True, **options)` whose first call, where compilation happens, turns
    any failure into one line naming `option` (the config key that asked for it) and the fix."""
    compiled = torch.compile(fn, fullgraph=True, **options)
    checked = False

    def run(*args):
        nonlocal checked
        if checked:
            return compiled(*args)
        try:
            result = compiled(*args)
        except Exception as e:  # noqa: BLE001 - any failure to compile is the user's environment
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"{option}=true: torch.compile failed ({type(e).__name__}: {first}); "
                            f"set {option}=false, or install what it names (a C++ compiler for CPU)") from None
        checked = True
        return result

    return run
