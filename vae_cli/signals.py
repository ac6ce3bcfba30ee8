"""Graceful stop: SIGINT (Ctrl-C) and SIGTERM (what SLURM sends before it preempts or cancels a
job) ask the training loop to save a checkpoint at the next step boundary and stop; a second
signal stops at once.

`GracefulStop` is a context manager around the loop. It installs its handlers on entry and puts the
previous ones back on exit, so `train()` can run in-process (tests, Hydra's multirun) without
leaving handlers behind. Outside the main thread, where Python cannot install handlers, it does
nothing and signals keep their usual effect.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install(signals: tuple, handler) -> dict[int, object]:
    """`handler` for `signals`, from the main thread (elsewhere Python cannot install one: nothing is
    done); the previous handlers, for `restore`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in signals}


def restore(previous: dict[int, object]) -> None:
    """Puts back the handlers `install` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
    previous.clear()


class GracefulStop:
    """`requested` becomes true at the first SIGINT/SIGTERM; the loop polls it between steps.

    A second signal writes `at_once_message` to stderr and raises SystemExit(128 + signum) from the
    handler: the files of the run folder stay whole because every write is atomic.
    """

    def __init__(self, at_once_message: str):
        self.at_once_message = at_once_message
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        self._previous = install(SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        message = self.at_once_message.replace("{signal}", signal.Signals(signum).name)
        os.write(2, f"{message}\n".encode())  # not print(): it is not reentrant
        raise SystemExit(128 + signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


class InterruptCheck:
    """Ctrl-C as Python raises it (KeyboardInterrupt at once), remembered: a KeyboardInterrupt that
    landed where Python swallows exceptions (a finalizer, a callback) is raised again by `check()`,
    which a loop calls between batches. Outside the main thread it does nothing."""

    def __init__(self):
        self.seen = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> InterruptCheck:
        self._previous = install((signal.SIGINT,), self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)

    def _handle(self, signum: int, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt
