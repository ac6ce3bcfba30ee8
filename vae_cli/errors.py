"""The exception types the console scripts turn into one line on stderr instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input, data or files; the message names it and the fix."""


class RunStopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) after saving a checkpoint; the message says how to
    resume. `exit_code` is 128 + the signal number, as a shell reports a process ended by it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def install_extra(extra: str) -> str:
    """The command that installs an optional extra, as the README installs vae-cli (from its checkout)."""
    return f'pip install -e ".[{extra}]" in the vae-cli checkout'
