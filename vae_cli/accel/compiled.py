"""`speed.compile=true`: each update of a method as one compiled graph, from outside the method.

The eager update runs the method's terms, autograd's backward and the optimizer's kernel one after
the other, with Python in between. Here `torch.func.grad` differentiates the same objective ((1/N)
eq. (8) of the update's terms, `estimators.map_objective`) and torch.optim's own functional kernel
(`torch.optim.adagrad.adagrad`, `adam.adam`, `sgd.sgd`, on the optimizer's own state tensors) follows
inside the same function, so torch.compile sees forward, backward and update as one graph. The draws
stay eager, in the eager order, so the random stream is the eager one; numbers agree with eager to
float rounding. The guard's check of every gradient is in the graph; with `trainer.on_nan=skip_batch`
a flagged update leaves parameters and state as they were. On a GPU the graph is also captured as a
CUDA graph (`mode="reduce-overhead"`): at M = 100 a step is a few dozen small kernels, launch-bound,
and replaying one graph removes the launches.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.adagrad import adagrad
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from ..errors import UserError
from ..estimators import map_objective
from ..methods import Method, Update, take_step


class Call(nn.Module):
    """`fn(model, *args)` as a module call, so `torch.func.functional_call` can swap in parameters."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def functional_step(optimizer: torch.optim.Optimizer, params: dict[int, torch.Tensor], grads: dict[int, torch.Tensor]) -> None:
    """The optimizer's update through torch.optim's functional form, group by group: `params[id(p)]`
    and `grads[id(p)]` are the values (a detached alias, its gradient) of the optimizer's parameter p."""
    for group in optimizer.param_groups:
        ps, gs = [params[id(p)] for p in group["params"]], [grads[id(p)] for p in group["params"]]
        state = [optimizer.state[p] for p in group["params"]]
        common = {"lr": group["lr"], "weight_decay": group["weight_decay"], "maximize": False, "foreach": False}
        if isinstance(optimizer, torch.optim.Adagrad):
            adagrad(ps, gs, [s["sum"] for s in state], [s["step"] for s in state],
                    lr_decay=group["lr_decay"], eps=group["eps"], **common)
        elif isinstance(optimizer, torch.optim.Adam):
            adam(ps, gs, [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state], [], [s["step"] for s in state],
                 amsgrad=False, beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"], **common)
        elif isinstance(optimizer, torch.optim.SGD):
            sgd(ps, gs, [s.get("momentum_buffer") for s in state], momentum=group["momentum"], dampening=group["dampening"],
                nesterov=group["nesterov"], **common)
        else:
            raise ValueError(f"speed.compile=true has no functional form of {type(optimizer).__name__}")


def prepare_state(optimizer: torch.optim.Optimizer) -> None:
    """Adam's state as its first eager step makes it (the graph reads it); every step counter on its
    parameter's device, so the graph never copies to the host."""
    for p in (p for group in optimizer.param_groups for p in group["params"]):
        state = optimizer.state[p]
        if isinstance(optimizer, torch.optim.Adam) and not state:
            state.update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        if "step" in state:
            state["step"] = state["step"].to(p.device)


def compile_update(method: Method, update: Update) -> Callable:
    """`run(*inputs) -> (shown, nonfinite)`: one compiled update of the optimizer `update.optimizer` over
    its parameters (the model's others held fixed) on the update's terms at `inputs`."""
    model, optimizer, skip = method.model, method.optimizers[update.optimizer], method.skip_nonfinite
    terms = Call(model, update.terms)
    names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    held = [p for p in model.parameters() if id(p) not in {id(q) for q in trained}]  # e.g. phi in the wake phase

    def objective(params: dict, fixed: dict, *inputs):
        values, shown = torch.func.functional_call(terms, {**params, **fixed}, inputs)
        return -map_objective(values, method.n_train), shown.detach()  # ascent: minimise the negative

    def step(*inputs):  # the parameters and the optimizer's state are read from here: static for CUDA graphs
        params = {names[id(p)]: p.detach() for p in trained}  # aliases: the update writes their storage
        fixed = {names[id(p)]: p.detach() for p in held}
        grads, shown = torch.func.grad(objective, has_aux=True)(params, fixed, *inputs)
        bad = (~torch.isfinite(torch.stack([g.abs().amax() for g in grads.values()]).amax())).float()
        alias = {id(p): params[names[id(p)]] for p in trained}
        before = [t.clone() for t in _state_tensors(optimizer, alias)] if skip else []
        with torch.no_grad():
            functional_step(optimizer, alias, {id(p): grads[names[id(p)]] for p in trained})
            if skip:  # a skipped update leaves everything as it was
                for old, new in zip(before, _state_tensors(optimizer, alias)):
                    new.copy_(torch.where(bad > 0, old, new))
        return shown, bad

    on_gpu = next(model.parameters()).is_cuda
    compiled = checked_compile(step, "speed.compile", dynamic=False, mode="reduce-overhead" if on_gpu else None)  # GPU: CUDA graphs
    prepared = False

    def run(*inputs):
        nonlocal prepared
        if not prepared:  # at the first step, after any checkpoint's state was loaded
            prepare_state(optimizer)
            prepared = True
        shown, bad = compiled(*inputs)
        if not (skip and bad.item()):
            with warnings.catch_warnings():  # the schedule never sees optimizer.step(): the functional form ran
                warnings.simplefilter("ignore", UserWarning)
                method.schedules[update.optimizer].step()
        return shown, bad

    return run


def _state_tensors(optimizer: torch.optim.Optimizer, alias: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """The parameters' values and every state tensor of the optimizer, in a fixed order."""
    out = []
    for p in (p for group in optimizer.param_groups for p in group["params"]):
        out.append(alias[id(p)])
        state = optimizer.state[p]
        out += [state[key] for key in sorted(state) if torch.is_tensor(state[key])]
    return out


def compiled_steps(method: Method) -> Callable:
    """A `step_fn` for `learner.Learner`: `methods.take_step` with each update compiled (at its first call)."""
    torch.compiler.reset()  # a process that trains run after run (a multirun, a notebook) must not pile up cache entries
    built = {update.optimizer: compile_update(method, update) for update in method.updates()}

    def apply(method: Method, update: Update, inputs: tuple):
        return built[update.optimizer](*inputs)

    return functools.partial(take_step, apply=apply)


def checked_compile(fn: Callable, option: str, **options) -> Callable:
    """`torch.compile(fn, fullgraph=True)` whose first call, where compilation happens, turns any
    failure into one line naming the config key `option` and the fix."""
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
