"""Value checks a type cannot express, declared on the schema fields that need them (`config.py`, the
likelihood settings) and applied by `config.validate` and `jobs.evaluate.validate_eval`."""

from __future__ import annotations

from dataclasses import field

RULES = {  # rule: (is the value bad?, what it must be)
    "positive": (lambda v: not v > 0, "must be positive"),
    "non_negative": (lambda v: not v >= 0, "must be >= 0"),
    "probability": (lambda v: not 0 < v < 1, "must lie strictly between 0 and 1"),
    "fraction": (lambda v: not 0 <= v < 1, "must lie in [0, 1)"),
    "whole": (lambda v: not (v > 0 and float(v) == int(v)), "must be a positive whole number of samples"),
}


def check(default, rule: str):
    """A dataclass field with `default` whose value must satisfy `rule` (a key of RULES)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"check": rule})
    return field(default=default, metadata={"check": rule})
