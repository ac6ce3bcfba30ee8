"""One trainer per run folder: an exclusive lock held while a vae-train trains in it."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from .errors import UserError


class RunLock:
    """An exclusive lock on a run folder, held by the one vae-train that trains in it.

    `flock` on the folder's own descriptor: no file is added to the folder, and the kernel drops the
    lock when the process ends, however it ends (a kill included). A second trainer is refused in one
    line naming the first one's pid (read from /proc/locks where there is one). On a file system
    without flock (some network ones) the run goes on unlocked.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock if the folder exists (else the caller calls again once it does)."""
        if self.fd is not None or os.name != "posix" or not self.run_dir.is_dir():
            return
        import fcntl

        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = lock_holder(self.run_dir)
            raise UserError(f"{self.run_dir} is being trained by another vae-train{f' (pid {pid})' if pid else ''}; "
                            "wait for it to finish or stop it") from None
        except OSError:  # no flock here
            os.close(fd)
            return
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(folder: Path) -> int | None:
    """The pid holding a flock on `folder`, from /proc/locks (Linux); None where it cannot be told."""
    with suppress(OSError, ValueError):
        st = os.stat(folder)
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and "->" not in fields and inode in fields:
                return int(fields[fields.index(inode) - 1])
    return None
