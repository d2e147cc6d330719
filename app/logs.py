"""Logging set-up shared by every process of the gateway."""
from __future__ import annotations

import logging
import os

from app.settings import Settings


def configure_logging(settings: Settings, role: str) -> None:
    """Log to stderr with the process role and pid in every line."""
    level = logging.DEBUG if settings.debug else logging.INFO
    fmt = f"%(asctime)s %(levelname)s [{role} {os.getpid()}] %(name)s: %(message)s"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log request details at debug level stay at info: no headers (keys) in logs.
    for noisy in ("openai", "httpx", "httpcore", "urllib3", "watchdog", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO) if noisy != "watchdog" else logging.WARNING)
