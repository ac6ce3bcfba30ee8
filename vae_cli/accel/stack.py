"""`speed.n_models=K`: K models of seeds s..s+K-1 trained side by side in one process, per kernel.

Model k of the stack is the model of a separate run with `seed=s+k`: built from its own initial
generator, fed its own minibatches and noise from its own streams (`generators.training_generators`
of seed s+k). The K models' parameters are stacked along a leading axis (`torch.func.stack_module_state`)
and the method is built once over them, so its optimizers (elementwise rules: Adagrad, Adam, SGD) are
exactly K independent ones. Each update draws every model's inputs with that model's generator
(outside any transform, as `methods.Update.draw` does for one model), then `torch.func.vmap` runs the
method's own terms and their gradient for all K models as one batched computation. The densities,
estimators and methods know nothing of the stack. Model k computes what its separate run computes,
up to the summation order of the batched matrix products.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from ..data import Dataset, MinibatchSampler
from ..estimators import map_objective
from ..evaluation import evaluate_bound
from ..generators import init_generator, training_generators
from ..learner import Member
from ..methods import METHODS, Method, Minibatch, Step, Update, load_optimizer_state, optimizer_state, take_step
from ..models import VAE, build_vae
from ..optim import apply_gradients
from .compiled import Call


def stacked_holder(models: list[VAE]) -> VAE:
    """A copy of model 0 whose every parameter is the K models' stacked along a new first axis: the
    parameters the optimizers hold and the checkpoint saves (names as a single model's)."""
    stacked, _ = torch.func.stack_module_state(models)
    holder = copy.deepcopy(models[0])
    for name, value in stacked.items():
        module, _, attr = name.rpartition(".")
        setattr(holder.get_submodule(module), attr, nn.Parameter(value.detach().clone()))
    return holder


class StackLearner:
    """What `loop.train_loop` trains for `speed.n_models=K` (the face of `learner.Learner`)."""

    def __init__(self, cfg, data: Dataset, device: torch.device):
        self.seeds = [cfg.seed + k for k in range(cfg.speed.n_models)]
        self.models = [build_vae(data.data_dim, cfg.model, init_generator(s)).to(device) for s in self.seeds]
        self.holder = stacked_holder(self.models)
        self.generators = [training_generators(s, device) for s in self.seeds]
        self.method: Method = METHODS[cfg.method.name].build(cfg, self.holder, data.n_train, device, None)
        self.samplers = [MinibatchSampler(data.n_train, cfg.trainer.batch_size, cfg.trainer.minibatches == "with_replacement")
                         for _ in self.seeds]
        self.data = data
        self.batch_size = cfg.trainer.batch_size
        self.skip_nonfinite = self.method.skip_nonfinite
        self.capabilities = self.method.capabilities

    def step(self) -> Step:
        parts = []
        for sampler, g in zip(self.samplers, self.generators):
            idx = sampler.next(g["data"], self.data.train.device)
            parts.append((self.data.minibatch(idx, g["noise"]), idx))
        batch = Minibatch(torch.stack([x for x, _ in parts]), torch.stack([i for _, i in parts]))  # (K, M, D), (K, M)
        return take_step(self.method, batch, [g["noise"] for g in self.generators], draw=self.draw, apply=self.apply)

    def member_params(self, k: int) -> dict[str, torch.Tensor]:
        return {f"model.{n}": p[k].detach() for n, p in self.holder.named_parameters()}

    def draw(self, method: Method, update: Update, batch: Minibatch, generators: list) -> tuple:
        """Each model's inputs from its own generator, stacked: (K, ...) each."""
        draw = Call(self.models[0], update.draw)
        per_model = [torch.func.functional_call(draw, self.member_params(k), (Minibatch(batch.x[k], batch.idx[k]), g))
                     for k, g in enumerate(generators)]
        return tuple(torch.stack(parts) for parts in zip(*per_model))

    def apply(self, method: Method, update: Update, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """The update for all K models: the method's terms and their gradient vmapped over the stack,
        then its optimizer's own step on the stacked parameters."""
        optimizer = method.optimizers[update.optimizer]
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = {f"model.{n}": p for n, p in self.holder.named_parameters() if id(p) in trained}
        fixed = {f"model.{n}": p.detach() for n, p in self.holder.named_parameters() if id(p) not in trained}
        terms = Call(self.models[0], update.terms)

        def objective(params, fixed, *inputs):
            values, shown = torch.func.functional_call(terms, {**params, **fixed}, inputs)
            return -map_objective(values, method.n_train), shown.detach()

        grads, shown = torch.func.vmap(torch.func.grad(objective, has_aux=True))({k: v.detach() for k, v in params.items()}, fixed, *inputs)
        for name, p in params.items():
            p.grad = grads[name]
        return shown, apply_gradients(optimizer, method.schedules[update.optimizer], method.skip_nonfinite)

    def members(self) -> list[Member]:
        """The K models as plain VAEs holding the stack's current weights (copied in)."""
        state = self.holder.state_dict()
        for k, model in enumerate(self.models):
            model.load_state_dict({n: t[k] for n, t in state.items()})
        return [Member(m, k, functools.partial(evaluate_bound, m), dict) for k, m in enumerate(self.models)]

    def state_dict(self) -> dict:
        return {"model": self.holder.state_dict(), "method": optimizer_state(self.method),
                "sampler": [s.state_dict() for s in self.samplers],
                "rng": {name: torch.stack([g[name].get_state() for g in self.generators]) for name in self.generators[0]}}

    def load_state_dict(self, state: dict) -> None:
        self.holder.load_state_dict(state["model"])
        load_optimizer_state(self.method, state["method"])
        for sampler, saved in zip(self.samplers, state["sampler"], strict=True):
            sampler.load_state_dict(saved, self.data.train.device)
        for name, states in state["rng"].items():
            for g, row in zip(self.generators, states, strict=True):
                g[name].set_state(row.clone())  # a row of its own: set_state of a view at an offset crashes torch 2.13

