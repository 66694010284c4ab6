"""Who writes to a lake, and when a writer is provably gone.

A writer (an ingest, a run, a `predict --write`) is identified by its owner: host, pid and a
start token. The token holds the process start time, so a pid that the system handed to
another process later does not pass for the old writer. A writer also refreshes a heartbeat
while it lives. An owner is gone when, on this host, its process no longer exists (or is
another process with the same pid), or when its heartbeat is older than a timeout: the only
rule that works for a writer on another host, whose pid cannot be checked from here.

Folders a writer creates before it commits (staging folders of Delta writes) carry a marker
file with the owner; the marker's modification time is its heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MARKER_NAME = "_leukspark_owner.json"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str

    def describe(self) -> str:
        return f"{self.host}:{self.pid}"


_CURRENT: Owner | None = None


def current_owner() -> Owner:
    """This process's owner (a forked child gets its own)."""
    global _CURRENT
    if _CURRENT is None or _CURRENT.pid != os.getpid():
        pid = os.getpid()
        _CURRENT = Owner(socket.gethostname(), pid, f"{_start_ticks(pid) or 0}.{uuid.uuid4().hex[:8]}")
    return _CURRENT


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot (Linux), None where /proc has no answer."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: the fields after it follow its closing ')'.
    return text[text.rindex(")") + 2:].split()


def process_alive(pid: int, token: str | None = None) -> bool:
    """Whether `pid` runs on this host and, when the token holds a start time, is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    if stat[0] in ("Z", "X"):  # killed, not reaped yet
        return False
    started = (token or "").split(".")[0]
    return not (started and started != "0" and started != stat[19])


def owner_is_gone(owner: Owner | None, heartbeat: datetime | float | None, timeout_s: float,
                  *, now: float | None = None) -> bool:
    """True only when the owner provably no longer writes (see the module docstring)."""
    now = time.time() if now is None else now
    if heartbeat is not None:
        beat = heartbeat.timestamp() if isinstance(heartbeat, datetime) else float(heartbeat)
        if now - beat > timeout_s:
            return True
    if owner is None:
        return heartbeat is None
    if owner.host == socket.gethostname():
        return not process_alive(owner.pid, owner.token)
    return False


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- staging markers ------------------------------------------------------------------------
def write_marker(directory: Path, owner: Owner | None = None) -> Path:
    marker = directory / MARKER_NAME
    marker.write_text(json.dumps(asdict(owner or current_owner())))
    return marker


def read_marker(directory: Path) -> tuple[Owner | None, float] | None:
    """(owner, heartbeat as epoch seconds) of a folder's marker; None when it has none."""
    marker = directory / MARKER_NAME
    try:
        beat = marker.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(marker.read_text())
        return Owner(str(data["host"]), int(data["pid"]), str(data["token"])), beat
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable (half-written by a killed writer): only its age can speak for it.
        return None, beat


class Heartbeat:
    """A daemon thread that calls `beat` every `interval_s` seconds until stopped.

    A failing beat is logged and retried at the next tick: a heartbeat must not kill its writer.
    """

    def __init__(self, beat: Callable[[], None], interval_s: float, name: str = "leukspark-heartbeat"):
        self._beat = beat
        self._interval = max(float(interval_s), 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                log.warning("heartbeat %s failed: %s", self._thread.name, exc)


class MarkerKeeper:
    """Keeps the markers of this process's live staging folders fresh (one thread for all of them)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._markers: set[Path] = set()
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None

    def add(self, directory: Path) -> None:
        write_marker(directory)
        with self._lock:
            self._markers.add(directory / MARKER_NAME)
            if self._heartbeat is None:
                self._heartbeat = Heartbeat(self._touch_all, self.interval_s, "leukspark-staging-heartbeat").start()

    def release(self, directory: Path) -> None:
        """The folder is committed or discarded: its marker goes (a committed folder has none)."""
        marker = directory / MARKER_NAME
        with self._lock:
            self._markers.discard(marker)
        marker.unlink(missing_ok=True)

    def _touch_all(self) -> None:
        with self._lock:
            markers = list(self._markers)
        for marker in markers:
            try:
                os.utime(marker)
            except FileNotFoundError:
                pass
