"""The configuration of a run: composition (Hydra's ConfigStore holds the schemas of `schemas.py`),
the checks types cannot express (`validate`), and a saved config read back as a typed one
(`typed_config`)."""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .checks import RULES
from .errors import UserError
from .eval_schemas import LIKELIHOOD_SCHEMAS, EvalConfig
from .schemas import GROUPS, OPTIONS, Binarize, Decoder, LoggerConfig, TrainConfig


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, options in OPTIONS.items():
        for option, schema in options.items():
            store.store(group=group, name=f"{option}_schema", node=schema)
    store.store(name="eval_schema", node=EvalConfig)
    for name, schema in LIKELIHOOD_SCHEMAS.items():
        store.store(group="likelihood", name=f"{name}_schema", node=schema)


def check_fields(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise a one-line UserError for the first key `schema` does not declare (Hydra's `+key=value`
    adds them) or the first value against its field's `check` rule (`checks.RULES`)."""
    declared = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        if key not in declared and not (key == "hydra" and not prefix):
            raise UserError(f"unknown config key '{prefix}{key}'; see the keys with --cfg job")
    for f in declared.values():
        value = cfg.get(f.name)
        key = prefix + f.name
        nested = f.default_factory if f.default_factory is not NO_DEFAULT else None
        if is_dataclass(nested) and isinstance(value, DictConfig):
            check_fields(value, nested, key + ".")
        rule = f.metadata.get("check")
        if rule is None or value is None:
            continue
        bad, need = RULES[rule]
        values = list(value) if OmegaConf.is_list(value) else [value]
        if any(bad(v) for v in values):
            raise UserError(f"{key}={list(value) if OmegaConf.is_list(value) else value} {need}; set {key}= to such a value")


def validate(cfg: DictConfig) -> None:
    """The checks types cannot express, each a one-line UserError naming the key and a fix."""
    from .methods import METHODS  # what each method can do is its own record, read here

    top = {f.name for f in fields(TrainConfig)}
    extra = [key for key in cfg.keys() if key not in top and key != "hydra"]
    if extra:
        raise UserError(f"unknown config key '{extra[0]}'; see the keys with `vae-train --cfg job`")
    for group, options in OPTIONS.items():
        name = cfg[group].name
        if name not in options:
            raise UserError(f"{group}.name={name} is not one of {', '.join(options)}; choose the option with {group}=<one of them>")
        if not {f.name for f in fields(options[name])} <= set(cfg[group].keys()):  # e.g. method.name=mcem on method=aevb
            raise UserError(f"{group}.name={name} does not match the {group} option chosen; choose it with {group}={name}")
        check_fields(cfg[group], options[name], group + ".")
    for name, schema in GROUPS.items():
        check_fields(cfg[name], schema, name + ".")
    if any(h <= 0 for h in cfg.model.hidden):
        raise UserError(f"model.hidden={list(cfg.model.hidden)} must hold positive layer sizes, e.g. model.hidden=[500]")
    if cfg.dataset.name == "mnist" and cfg.dataset.binarize != Binarize.none and cfg.model.decoder != Decoder.bernoulli:
        raise UserError(f"dataset.binarize={cfg.dataset.binarize.value} needs a Bernoulli decoder; set dataset.binarize=none for {cfg.model.decoder.value}")
    if cfg.method.name == "full_vb" and cfg.prior.precision == 0:
        raise UserError("method=full_vb needs a proper hyperprior p_alpha(theta); set prior.precision= above 0 (paper: 1)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device={cfg.device} is not one of auto, cpu, cuda; set device=<one of them>")
    if cfg.speed.compile and cfg.speed.n_models > 1:
        raise UserError("speed.compile=true compiles one model's updates; a stack (speed.n_models>1) trains eagerly: set one of them back")
    can = METHODS[cfg.method.name].capabilities
    if cfg.speed.compile and not can.compile:
        raise UserError(f"speed.compile=true: method={cfg.method.name} trains eagerly only; set speed.compile=false")
    if cfg.speed.n_models > 1 and not can.stack:
        seeds = ",".join(str(cfg.seed + k) for k in range(cfg.speed.n_models))
        raise UserError(f"speed.n_models={cfg.speed.n_models}: method={cfg.method.name} cannot be stacked; "
                        f"run the seeds as separate jobs: speed.n_models=1 seed={seeds} --multirun")


def typed_config(saved: dict) -> DictConfig:
    """A saved (resolved, upgraded) config as a typed one: every group by its option's schema. Keys a
    schema does not declare are dropped (earlier versions wrote every group's keys for every option)."""
    cfg = OmegaConf.structured(TrainConfig)
    schemas = {**GROUPS, "logger": LoggerConfig}
    for group, options in OPTIONS.items():
        name = (saved.get(group) or {}).get("name")
        if name not in options:
            raise UserError(f"the saved config's {group}.name={name!r} is not one of {', '.join(options)}; use a matching vae-cli version")
        cfg[group] = OmegaConf.structured(options[name])
        schemas[group] = options[name]
    top = {f.name for f in fields(TrainConfig)}
    kept = {k: ({kk: vv for kk, vv in v.items() if kk in {f.name for f in fields(schemas[k])}} if k in schemas and isinstance(v, dict) else v)
            for k, v in saved.items() if k in top}
    try:
        return OmegaConf.merge(cfg, kept)
    except Exception as e:  # noqa: BLE001 - any mismatch with this version's schema
        raise UserError(f"the saved config does not fit this vae-cli ({str(e).splitlines()[0][:160]}); use a matching vae-cli version") from None


def to_container(cfg: Any) -> dict:
    """The resolved config as plain Python containers (what run folders and checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
