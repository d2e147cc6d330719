"""The watched services folder: every process (web worker or runner) holds one registry.

Watchdog events only mark the folder dirty; after a short quiet period the whole folder is
loaded and validated, and one reference is swapped. A file that fails validation is listed
in `errors`; if it replaces a valid version, the last valid version keeps serving.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from app.services.manifests import MANIFEST_SUFFIXES, ManifestError, Service, load_service

log = logging.getLogger(__name__)

WATCHED_SUFFIXES = MANIFEST_SUFFIXES + (".txt",)
# The folder is also compared with its last load this often: an event watchdog never delivers
# (seen now and then in a gevent web worker; inotify says nothing on some network and bind
# mounts, and drops events when its queue overflows) delays a reload by this much, not forever.
RESCAN_S = 5.0


def folder_signature(folder: str) -> tuple:
    """Name, modification time and size of each watched file: what a reload would read."""
    try:
        with os.scandir(folder) as entries:
            return tuple(sorted((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                                for entry in entries if entry.name.endswith(WATCHED_SUFFIXES)))
    except OSError:             # no folder (yet), or a file gone between listing and stat
        return ()


@dataclass(frozen=True)
class Snapshot:
    """The services loaded from the folder at one moment, and the files that failed."""

    services: dict[str, Service] = field(default_factory=dict)
    errors: tuple[dict[str, str], ...] = ()
    loaded_at: float = 0.0
    # manifest file name -> service name it provided (kept to serve the last valid version)
    sources: dict[str, str] = field(default_factory=dict)


def load_folder(folder: str, previous: Snapshot | None = None) -> Snapshot:
    """Load and validate every manifest of `folder`; keep a file's last valid service on error."""
    previous = previous or Snapshot()
    services: dict[str, Service] = {}
    sources: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        return Snapshot(errors=({"file": folder, "message": f"cannot read the services folder: {exc.strerror}"},),
                        loaded_at=time.time())
    for file_name in names:
        if not file_name.endswith(MANIFEST_SUFFIXES) or file_name.startswith("."):
            continue
        try:
            service = load_service(os.path.join(folder, file_name))
            if service.name in services:
                other = next(src for src, name in sources.items() if name == service.name)
                raise ManifestError(f"the service name '{service.name}' is already used by {other}")
        except ManifestError as exc:
            errors.append({"file": file_name, "message": str(exc)})
            kept = previous.sources.get(file_name)
            if kept and kept in previous.services and kept not in services:
                services[kept] = previous.services[kept]
                sources[file_name] = kept
                log.warning("services: %s is invalid (%s); the last valid version of '%s' keeps serving",
                            file_name, exc, kept)
            else:
                log.warning("services: %s is invalid: %s", file_name, exc)
            continue
        except Exception as exc:  # a loader bug must not take the registry down
            log.exception("services: unexpected error loading %s", file_name)
            errors.append({"file": file_name, "message": f"unexpected error: {exc}"})
            continue
        services[service.name] = service
        sources[file_name] = service.name
    return Snapshot(services=services, errors=tuple(errors), loaded_at=time.time(), sources=sources)


class _Handler(FileSystemEventHandler):
    """Marks the registry dirty on any event that touches a manifest or template."""

    def __init__(self, on_change: Callable[[], None]):
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if event.is_directory or any(str(p).endswith(WATCHED_SUFFIXES) for p in paths if p):
            self.on_change()


class ServiceRegistry:
    """The current services of a folder, kept up to date by watchdog."""

    def __init__(self, folder: str, debounce: float = 0.3):
        self.folder = folder
        self.debounce = debounce
        self._snapshot = Snapshot()
        self._dirty = threading.Event()
        self._last_event = 0.0
        self._loaded_signature: tuple = ()
        self._next_scan = 0.0
        self._stop = threading.Event()
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self.listeners: list[Callable[[Snapshot], None]] = []

    @property
    def snapshot(self) -> Snapshot:
        """The services as last loaded (one reference, swapped whole)."""
        return self._snapshot

    def get(self, name: str) -> Service | None:
        """The service called `name`, if loaded."""
        return self._snapshot.services.get(name)

    def reload(self) -> Snapshot:
        """Load the folder now and swap the result in."""
        # Taken before loading: a change made while it loads is seen by the next scan.
        self._loaded_signature = folder_signature(self.folder)
        self._next_scan = time.monotonic() + RESCAN_S
        snapshot = load_folder(self.folder, self._snapshot)
        self._snapshot = snapshot
        log.info("services: loaded %s%s", ", ".join(sorted(snapshot.services)) or "none",
                 f" ({len(snapshot.errors)} invalid file(s))" if snapshot.errors else "")
        for listener in self.listeners:
            listener(snapshot)
        return snapshot

    def mark_dirty(self) -> None:
        """Note that the folder changed; the reload happens after the debounce."""
        self._last_event = time.monotonic()
        self._dirty.set()

    def tick(self, now: float | None = None) -> bool:
        """Reload if the folder changed and has been quiet for the debounce; True if reloaded.
        Every RESCAN_S without a reload, the folder is compared with its last load, in case an
        event was missed."""
        now = time.monotonic() if now is None else now
        if not self._dirty.is_set() and now >= self._next_scan:
            self._next_scan = now + RESCAN_S
            if folder_signature(self.folder) != self._loaded_signature:
                log.info("services: the folder changed without an event; reloading")
                self._last_event = now
                self._dirty.set()
        if self._dirty.is_set() and now - self._last_event >= self.debounce:
            self._dirty.clear()
            self.reload()
            return True
        return False

    def start(self) -> "ServiceRegistry":
        """Load the folder and start watching it."""
        self.reload()
        if os.path.isdir(self.folder):
            self._observer = Observer()
            self._observer.schedule(_Handler(self.mark_dirty), self.folder, recursive=False)
            self._observer.daemon = True
            self._observer.start()
        else:
            log.warning("services: %s is not a folder; nothing to watch", self.folder)
        self._thread = threading.Thread(target=self._loop, name="services-reload", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(timeout=1.0)
            try:
                self.tick()
            except Exception:  # the loop never dies; the old registry keeps serving
                log.exception("services: reload failed")
            self._stop.wait(self.debounce / 3)

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._dirty.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
