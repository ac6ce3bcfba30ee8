"""A stack of K VAEs trained side by side in one process (`trainer.n_models=K`): many seeds, one job.

Model k of a stack run with `seed=s` is the model of a separate run with `seed=s+k`: built by
`models.build_vae` from its own initial generator, fed its own data order and its own noise
(`generators.py`). The stack holds the K models' parameters with a leading model axis: every
`nn.Linear` becomes a `StackedLinear` (weight (K, out, in), bias (K, out)) applied as one batched
matmul to inputs (..., K, M, in), every other parameter gets the model axis first. The densities keep
every leading axis (`distributions.py`), so the estimators run unchanged on x (K, M, D) with
z (L, K, M, J) and return bounds (K, M). The objective of a step is the sum over models of each
model's MAP objective (eq. (8) over N, `estimators.map_objective`; log p(theta)'s term is the
optimizer's elementwise weight decay), so model k's gradient is its own; Adagrad, Adam and SGD
update every element from its own gradient and state only, so one optimizer over the stacked parameters is exactly K independent optimizers. A stack
thus computes what K separate runs compute, up to the summation order of the matmuls.

Parameter names are a single model's, so model k's weights are the stacked state indexed at k
(`member_state`); evaluation, figures and vae-eval use such members as plain VAEs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .models import VAE


class StackedAffine(torch.autograd.Function):
    """Per model k, (R, in) -> (R, out): rows_k W_k^T + b_k as one batched matmul, and its backward
    with dW_k = g_k^T rows_k formed in W's own (K, out, in) layout. (Autograd of the forward alone
    yields dW transposed, which its accumulation then copies into W's layout: one extra pass over
    every weight of every model each step, about a fifth of a stacked step on a CPU.)"""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        return torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))  # (K, R, out), as nn.Linear's addmm

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_rows = torch.bmm(grad, weight) if needs[0] else None  # (K, R, in)
        grad_weight = torch.bmm(grad.transpose(1, 2), rows) if needs[1] else None  # (K, out, in)
        grad_bias = grad.sum(1) if needs[2] else None  # (K, out)
        return grad_rows, grad_weight, grad_bias


class StackedLinear(nn.Module):
    """K affine maps v -> W_k v + b_k side by side, one batched matmul over the model axis."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (K, out)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(..., K, M, in) -> (..., K, M, out): model k's rows through model k's layer.

        The leading (sample) axes join the rows of each model, as nn.Linear joins them, and the bias
        is added inside the product (baddbmm, as nn.Linear's addmm): each model's slice is computed
        exactly as a single model computes it (a view for inputs (K, M, in) and (1, K, M, in))."""
        n_models, in_dim = self.weight.shape[0], self.weight.shape[2]
        rows = v.movedim(-3, 0).reshape(n_models, -1, in_dim)  # (K, ... x M, in)
        if torch.compiler.is_compiling():  # trainer.compile (compiled_update.py): plain autograd, for under torch.func.grad
            # dynamo mishandles a custom backward and the gradients come out wrong (pytorch#193279)
            out = torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight.transpose(1, 2))
        else:
            out = StackedAffine.apply(rows, self.weight, self.bias)  # (K, ... x M, out)
        return out.reshape(n_models, *v.shape[:-3], v.shape[-2], -1).movedim(0, -3)


def stack_models(models: Sequence[VAE]) -> VAE:
    """One VAE whose parameters are the K models' stacked along a leading model axis (a copy)."""
    stacked = copy.deepcopy(models[0])
    for name, module in list(stacked.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(stacked.get_submodule(parent), attr, StackedLinear([m.get_submodule(name) for m in models]))
    for name, module in list(stacked.named_modules()):
        if isinstance(module, StackedLinear):
            continue
        for own, _ in list(module.named_parameters(recurse=False)):  # e.g. the linear-Gaussian decoder's log sigma^2
            path = f"{name}.{own}" if name else own
            setattr(module, own, nn.Parameter(torch.stack([m.get_parameter(path).detach() for m in models])))  # (K, ...)
    stacked.n_models = len(models)
    return stacked


def member_state(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Model k's state dict from a stack's (every tensor indexed at k on the model axis)."""
    return {name: tensor[k] for name, tensor in state.items()}


@torch.no_grad()
def load_members(stacked: VAE, members: Sequence[VAE]) -> Sequence[VAE]:
    """Copy the stack's current weights into its plain VAEs, `members[k]` <- model k; return them."""
    state = stacked.state_dict()
    for k, member in enumerate(members):
        member.load_state_dict(member_state(state, k))
    return members


def build_models(build: Callable[[torch.Generator], VAE], seed: int, n_models: int) -> tuple[VAE, list[VAE] | None]:
    """The model a run trains and, for a stack, its K plain members: model k built by `build` from a
    generator seeded `seed + k`, as a separate run with `seed=seed+k` builds it. One model is
    returned as it is built, with no members."""
    models = [build(torch.Generator().manual_seed(seed + k)) for k in range(n_models)]
    if n_models == 1:
        return models[0], None
    return stack_models(models), models
