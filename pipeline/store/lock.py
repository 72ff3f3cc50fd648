"""One writing process per project: the plugin and the CLI (or two plugins) never write a project at once.

``with project_writer(path, "oeem train-seg"):`` holds an OS file lock on ``<project>/.lock`` (``filelock``;
``flock`` on Unix), so a lock left by a process that died - even by ``kill -9`` - is free again at once and is
taken over. Who holds it is written beside it (``.lock.json``) for the message the second writer gets. Within
one process the lock is re-entrant across threads (a training job in a worker thread, corrections saved from the
GUI thread). Readers (viewing, evaluating, exporting) never take it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.errors import OEEMError

_LOCKS: dict[str, FileLock] = {}
_GUARD = threading.Lock()


class ProjectBusy(OEEMError):
    """Another process is writing the project."""


def _lock_for(project: Path) -> FileLock:
    key = str(project.resolve())
    with _GUARD:
        if key not in _LOCKS:
            _LOCKS[key] = FileLock(project / ".lock", thread_local=False)
        return _LOCKS[key]


def holder(project: str | Path) -> dict | None:
    """Who holds (or last held) the writer lock, as written by that process."""
    try:
        return json.loads((Path(project) / ".lock.json").read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def project_writer(project: str | Path, task: str, timeout: float = 0.0) -> Iterator[None]:
    """Hold the project's writer lock for ``task``; a second process gets :class:`ProjectBusy` naming the
    holder and since when (after waiting ``timeout`` seconds)."""
    project = Path(project)
    if not project.is_dir():
        raise OEEMError(f"{project}: no project here")
    lock = _lock_for(project)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        who = holder(project) or {}
        since = who.get("since", "an unknown time")
        raise ProjectBusy(f"{project}: being written by {who.get('task', 'another process')} (pid "
                          f"{who.get('pid', '?')} on {who.get('host', '?')}) since {since}; wait for it to finish "
                          "or close it there - viewing and exporting are not blocked") from None
    except OSError as exc:
        raise OEEMError(f"{project}: cannot take the writer lock ({exc.strerror or exc}); is the folder "
                        "read-only?") from None
    first = lock.lock_counter == 1
    try:
        if first:
            info = {"task": task, "pid": os.getpid(), "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            tmp = project / f".lock.json.{os.getpid()}.tmp"
            try:
                tmp.write_text(json.dumps(info))
                os.replace(tmp, project / ".lock.json")
            except OSError:  # e.g. a full disk: the lock holds all the same, only the "who" note is missing
                tmp.unlink(missing_ok=True)
                (project / ".lock.json").unlink(missing_ok=True)  # never name an earlier holder
        yield
    finally:
        lock.release()


def holding_writer(project: str | Path, task: str, job):
    """A stage generator that holds the writer lock while it runs (released on finish, error or cancel)."""
    with project_writer(project, task):
        return (yield from job)


def writes_project(task: str):
    """Decorate a stage generator whose first argument is a ProjectStore: it holds the writer lock while it runs,
    so a Python user writes under the same rule as the CLI and the dock (who usually hold it already: the lock is
    re-entrant within a process). A store opened read-only (a torchrun rank other than 0) takes no lock."""
    import functools

    def wrap(job_fn):
        @functools.wraps(job_fn)
        def job(store, *args, **kwargs):
            if not store.writable:
                return (yield from job_fn(store, *args, **kwargs))
            with project_writer(store.path, task):
                return (yield from job_fn(store, *args, **kwargs))
        return job
    return wrap
