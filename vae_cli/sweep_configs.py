"""A run's saved config.yaml, of this version or an earlier one, as this version's full config, and the
defaults an option brings: what `vae_cli.sweep` compares runs and names groups by.

`resolved_config` upgrades the names (`runs.upgrade_config`), drops the keys an earlier version wrote
for options that do not use them (Adagrad's betas, AEVB's HMC settings, which this version's schemas
lack) and types the rest by the schemas (`config.typed_config`), which fill in what a hand-written or
older config leaves out. `option_defaults` is the config a choice of data set, method, optimizer and
reading gives when nothing else is set.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from .errors import UserError
from .runs import flatten, upgrade_config

CHOICES = ("dataset.name", "method.name", "optimizer.name", "reading")  # keys whose value sets other keys' defaults


def _typed(saved: dict) -> dict:
    """`config.typed_config` as plain containers."""
    from .config import to_container, typed_config

    return to_container(typed_config(saved))


def resolved_config(saved: Any) -> dict:
    """A saved config.yaml of any version as this version's full config (nested); keys an earlier
    version wrote for options that do not use them (Adagrad's betas, AEVB's HMC settings) are dropped."""
    if not isinstance(saved, dict):
        raise UserError("config.yaml does not hold a vae-train config")
    without_seed = {k: v for k, v in saved.items() if k != "seed"}
    return {**copy.deepcopy(_resolved(json.dumps(without_seed, sort_keys=True, default=str))), "seed": saved.get("seed", 0)}


@lru_cache(maxsize=256)
def _resolved(saved_json: str) -> dict:
    return _typed(upgrade_config(json.loads(saved_json)))


@lru_cache(maxsize=64)
def option_defaults(choices: tuple) -> dict:
    """The flat config a run gets from its choices (data set, method, optimizer, reading) alone."""
    saved: dict = {}
    for key, value in zip(CHOICES, choices):
        if value is not None:
            group, _, leaf = key.rpartition(".")
            (saved.setdefault(group, {}) if group else saved)[leaf] = value
    try:
        return flatten(_typed(saved))  # not upgraded: these are this version's defaults
    except UserError:
        return {}
