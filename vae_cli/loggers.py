"""Where a run's evaluations go: metrics.jsonl always (`runs.MetricsLog`), TensorBoard scalars on top
(`logger.tensorboard=true`). Each logger's package is checked before anything of the run is written."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

CURVES = ("train_bound", "test_bound", "train_loglik", "test_loglik")


def require(cfg) -> None:
    """Fail in one line, before a run folder is touched, when a chosen logger's package is missing."""
    if cfg.logger.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError('logger.tensorboard=true needs the tensorboard package: pip install "vae-cli[tensorboard]"') from None


class TensorBoard:
    """Scalars bound/train, bound/test, loglik/... against training samples; a stack's per model."""

    def __init__(self, run_dir: Path, samples: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=samples or None)

    def log(self, rows: list[dict]) -> None:
        for row in rows:
            for key in CURVES:
                if row.get(key) is not None:
                    split, kind = key.split("_")
                    member = "" if row.get("model") is None else f"/model_{row['model']}"
                    self.writer.add_scalar(f"{kind}/{split}{member}", row[key], row["samples"])

    def close(self) -> None:
        self.writer.close()


def open_loggers(cfg, run_dir: Path, samples: int) -> list:
    return [TensorBoard(run_dir, samples)] if cfg.logger.tensorboard else []
