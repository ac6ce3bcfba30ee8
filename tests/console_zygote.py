"""Runs the console scripts (vae-train, vae-eval, vae-report) for the tests, each in a process of its own,
without paying for Python's start and torch's import each time: this process imports them once and
forks a child per command. The child sets the command's working folder, environment and argv, sends
its stdout and stderr to files, calls the script's entry point and exits with its exit code, as the
installed script would. Nothing has run in this process before a fork but imports (no thread pool
exists yet), so each child starts as clean as a fresh interpreter.

Protocol: one JSON request per line on stdin ({"script", "args", "env", "cwd", "stdout", "stderr",
"timeout"}), one JSON reply per line on stdout ({"returncode"} or {"timeout": true}).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from vae_cli import cli  # the import that costs: torch, Hydra, OmegaConf

ENTRY_POINTS = {"vae-train": cli.train_main, "vae-eval": cli.eval_main, "vae-report": cli.report_main}


def _child(request: dict) -> None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [request["script_path"], *request["args"]]
    code = 0
    try:
        ENTRY_POINTS[request["script"]]()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback, exit code 1
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.01)


def main() -> None:
    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        replies.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        replies.write(json.dumps(_wait(pid, request["timeout"])) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
