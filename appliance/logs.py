"""Logging set-up shared by the CLI, detached jobs and the TUI."""

from __future__ import annotations

import logging
import logging.handlers

from appliance.workspace import Workspace

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(workspace: Workspace | None, *, verbose: bool = False) -> None:
    """Log to workspace/logs/reckon.log (rotated) and, with --verbose, to stderr."""
    root = logging.getLogger()
    if getattr(root, "_reckon_configured", False):
        return
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if workspace is not None:
        handler = logging.handlers.RotatingFileHandler(
            workspace.logs / "reckon.log", maxBytes=10_000_000, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    if verbose:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(stream)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._reckon_configured = True  # type: ignore[attr-defined]
