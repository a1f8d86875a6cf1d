"""The run-folder lock: one training process writes into a run folder at a time.

``<run>/train.lock`` holds an exclusive ``fcntl.flock`` for as long as a run trains in the folder, and the holder's
PID for the message of the one refused. The kernel drops a flock when its process dies (``kill -9`` included), so
a lock left behind by a dead process never blocks; the file itself is removed on a clean release. A process that
locked a file another one has just removed tries again on the new file, so two processes never both hold the
folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UserError

LOCK_FILE = "train.lock"


class RunLock:
    """The lock of ``run_dir``: :meth:`acquire` (creating the folder) or raise :class:`UserError` naming the folder
    and the PID holding it; :meth:`release`. Also a context manager."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.file is None:
            file = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(file)
                file.close()
                raise UserError(f"run folder {self.path.parent} is in use by the training process {holder}; wait "
                                "for it to finish (or stop it) before training into this folder") from None
            if self._still_linked(file):
                file.truncate(0)
                file.write(f"{os.getpid()}\n")
                file.flush()
                self.file = file
            else:
                file.close()

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in this order, see :meth:`_still_linked`)."""
        if self.file is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _still_linked(self, file) -> bool:
        """Whether the file locked is still the folder's lock file, not one a releasing holder removed between
        this process opening and locking it."""
        try:
            return os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _holder(file) -> str:
        file.seek(0)
        pid = file.read().strip()
        return f"PID {pid}" if pid.isdigit() else "(PID not yet written)"


def ensure_free(run_dir: str | Path) -> None:
    """Raise :class:`UserError` if a live process holds ``run_dir``'s lock (the folder is left as it was, less a
    stale lock file)."""
    if Path(run_dir).is_dir():
        with RunLock(run_dir):
            pass


def ensure_new(run_dir: str | Path, hint: str = "choose another --out") -> None:
    """Raise :class:`UserError` if ``run_dir`` holds anything but a stale lock file (``hint`` says what to do
    instead), or a live process holds it: a new run starts in a new or empty folder."""
    ensure_free(run_dir)
    if Path(run_dir).exists() and any(path.name != LOCK_FILE for path in Path(run_dir).iterdir()):
        raise UserError(f"run folder {run_dir} already exists; {hint}")
