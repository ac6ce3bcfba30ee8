"""The `optimizer` config group: Adagrad (the paper's, AEVB §5), Adam and SGD.

Adagrad's unstated details (PAPER.md §10.5) follow PyTorch: accumulator starting at 0, eps outside
the root, no extra learning-rate decay (its own growing accumulator is the "annealing"). The
multi-tensor path is used on every device: fused kernels on CPU (one pass over all parameters
instead of a Python loop per tensor), foreach kernels on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    params = list(params)
    fast = {"fused": True} if device.type == "cpu" else {"foreach": True}
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, **fast)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, betas=tuple(cfg.betas), **fast)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, **fast)
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of adagrad, adam, sgd")
