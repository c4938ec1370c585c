"""One writer per output folder: :class:`RunLock` and the run marker ``run.json``.

    with RunLock(out_dir, "tools/infer.py"):      # a second run into out_dir raises LockError naming this one
        ...

The lock is an ``fcntl.flock`` on ``<folder>/.ppihd.lock``, which holds the owner (pid, host, tool, start). The
kernel drops the lock when its process dies, however it dies (kill -9 included), so a killed run never blocks
the next one: the next run takes the lock over and says whose it was. Where ``fcntl`` is missing (Windows), the
file is created exclusively and a lock whose pid is gone on this host is taken over.

``run.json`` says what a folder holds: ``{"status": "running", ...}`` from the start of a run, ``"complete"``
(with its counts) once every output is in place, ``"failed"`` with the error when it stopped on one. A folder
whose ``run.json`` says ``running`` while no process holds its lock is what a killed run left.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
from typing import Any, Dict, Optional

from .fileio import atomic_path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".ppihd.lock"
MARKER_NAME = "run.json"
_log = logging.getLogger("ppihd")


class LockError(RuntimeError):
    """Another live process holds the folder."""


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - alive, another user's
        return True
    return True


class RunLock:
    """Exclusive lock on ``folder`` for one run of ``tool`` (a context manager; the folder is created)."""

    def __init__(self, folder: str, tool: str):
        self.folder = os.path.abspath(folder)
        self.tool = tool
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd: Optional[int] = None

    def _owner(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _describe(self, owner: Dict[str, Any]) -> str:
        return (f"{owner.get('tool', 'another ppihd run')} (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, started {owner.get('started', '?')})")

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "tool": self.tool, "started": _now(),
              "argv": sys.argv}
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LockError(f"{self.folder} is in use by {self._describe(self._owner())}: wait for it to "
                                "finish, or choose another output folder") from None
            previous = self._owner()
        else:  # pragma: no cover - exclusive create, stale pid taken over
            previous = self._owner()
            if previous and previous.get("host") == me["host"] and _pid_alive(int(previous.get("pid", -1))):
                raise LockError(f"{self.folder} is in use by {self._describe(previous)}")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if previous.get("pid") and previous.get("pid") != me["pid"]:
            _log.warning("%s: took over the lock of %s, which is no longer running", self.folder,
                         self._describe(previous))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)   # an empty lock file: nobody's
        except OSError:  # pragma: no cover - a full or read-only disk must not hide the real error
            pass
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_marker(folder: str, status: str, **info: Any) -> str:
    """Write ``<folder>/run.json`` atomically: ``status`` (running | complete | failed) and ``info``."""
    path = os.path.join(folder, MARKER_NAME)
    doc = {"status": status, "pid": os.getpid(), "time": _now(), **info}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
    return path


def read_marker(folder: str) -> Optional[Dict[str, Any]]:
    """The folder's ``run.json``, or None."""
    try:
        with open(os.path.join(folder, MARKER_NAME), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
