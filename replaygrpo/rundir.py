"""A run directory belongs to one training process at a time.

A requeued or resubmitted cluster job can start a second `train` into the same
`hydra.run.dir` while the first still runs; both would append to metrics.jsonl and
overwrite each other's checkpoints. The first takes an exclusive `flock` on
`<run dir>/run.lock` and holds it until training ends or the process dies: the kernel
drops the lock with the process, so a crashed or SIGKILLed holder leaves nothing stuck
and `resume=auto` simply proceeds. The file also records the holder (pid, host, start
time) for the refusal message; its content is informational, the lock is the flock.
Under torchrun rank 0 holds it for the whole job.

`flock` works on local filesystems and on NFS (Linux emulates it with NFS byte-range
locks, so it is seen across nodes); a filesystem without it (Lustre mounted without
`-o flock`) gets a warning and no lock.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replaygrpo import distributed
from replaygrpo.model import FINAL_MODEL

if TYPE_CHECKING:
    from replaygrpo.config import Config

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_held: dict[Path, RunDirLock] = {}  # this process's locks, by resolved run dir


class RunDirError(RuntimeError):
    """The run directory cannot be used: held by another run, finished, or unfinished without resume."""


class RunDirLock:
    """An exclusive flock on `<run_dir>/run.lock`, held until `release` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir).resolve() / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunDirError(
                f"run directory {self.path.parent} is in use by another training run ({holder}); wait for it "
                "to end or stop it, or choose another hydra.run.dir. (A killed run releases it by itself: "
                f"do not delete {LOCK_FILE}.)") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("cannot lock %s (%s): nothing stops a second run into this directory", self.path, err)
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def _forget_in_child(self) -> None:
        # A forked child shares the lock's open file; closing its copy keeps a child that
        # outlives the trainer from holding the directory.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        info: dict[str, Any] = json.loads(raw.decode())
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def _after_fork_in_child() -> None:
    for lock in _held.values():
        lock._forget_in_child()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_run_dir(run_dir: Path, cfg: Config) -> None:
    """Refuse a directory that holds a finished run, or an unfinished one without resume/overwrite."""
    if cfg.resume is not None or cfg.overwrite:
        return
    if (run_dir / FINAL_MODEL).exists():
        raise RunDirError(
            f"run directory {run_dir} already holds a finished run ({FINAL_MODEL}/ exists); "
            "choose another hydra.run.dir, or pass overwrite=true to replace it.")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        raise RunDirError(
            f"run directory {run_dir} holds an unfinished run (metrics.jsonl is not empty); "
            "pass resume=auto to continue it, or overwrite=true to start over.")


def claim_run_dir(run_dir: Path, cfg: Config) -> None:
    """Lock `run_dir` for this run (rank 0 under torchrun), then check what it holds.

    Every rank calls it and every rank raises the same RunDirError, so no rank is left
    waiting in a collective. Calling it again in the process that holds the lock is a no-op
    lock-wise (a second `train` in one Python session, e.g. after an error).
    """
    error = None
    if distributed.is_main():
        key = Path(run_dir).resolve()
        try:
            if key not in _held:
                lock = RunDirLock(key)
                lock.acquire()
                _held[key] = lock
            check_run_dir(run_dir, cfg)
        except RunDirError as err:
            error = str(err)
            release_run_dir(key)  # this process will not train here
    error = distributed.broadcast(error)
    if error is not None:
        raise RunDirError(error)


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on `run_dir` (the end of `train`); a no-op if it holds none."""
    lock = _held.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()
