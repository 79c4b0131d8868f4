"""The one logging set-up of a ``wa-relay`` process, from the node configs
(:func:`logging.config.dictConfig`).

* Every node logs to ``wa_relay.node.<id>`` at its ``log_level`` (or the CLI's
  ``--log-level``, which wins for every sink); its lines go to stderr and, with
  ``log_file``, to that file (created 0600, appended). ``log_format`` is
  ``text`` or ``json`` (one object per line, :class:`JsonFormatter`).
* The storage's own loggers (``storage.*``) and Trio's accept errors
  (``trio.serve_listeners``: EMFILE and friends, which Trio logs with a traceback
  every 100 ms while they last) go to stderr and to every node's file; the
  accept errors through a :class:`RateLimitFilter` (one line per
  :data:`ACCEPT_ERROR_INTERVAL` s, with how many were suppressed, no traceback).
* :meth:`LogFiles.reopen` reopens every log file (``SIGHUP``, for logrotate).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from relay.config import NodeConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCEPT_ERROR_INTERVAL = 10.0
LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "error": "ERROR"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC, ms), ``level``, ``logger``,
    ``message``, and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


class RateLimitFilter(logging.Filter):
    """Let one record through per ``interval`` seconds; the next one that passes
    says how many were held back. Tracebacks are dropped (the message names the
    error). Not thread-safe beyond the logging module's own locking (Trio thread)."""

    def __init__(self, interval: float = ACCEPT_ERROR_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return False
        self._last = now
        record.exc_info = record.exc_text = None
        if self._held:
            record.msg = f"{record.msg} ({self._held} more like this in the last %g s)"
            record.args = (*(record.args or ()), self.interval)  # type: ignore[arg-type]
            self._held = 0
        return True


class ReopenableFileHandler(logging.FileHandler):
    """A :class:`logging.FileHandler` appending to a file created with mode 0600,
    which :meth:`reopen` closes and opens again (after logrotate moved it)."""

    def _open(self):  # noqa: ANN202 - FileHandler's hook
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        """Close the file and open its path again (a new file if it was moved)."""
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class LogFiles:
    """The file handlers :func:`configure_logging` installed, by node logger name."""

    def __init__(self, handlers: dict[str, ReopenableFileHandler]) -> None:
        self.handlers = handlers

    def reopen(self) -> None:
        """Reopen every log file (``SIGHUP``) and say so in each."""
        for name, handler in self.handlers.items():
            handler.reopen()
            logging.getLogger(name).info("log file reopened (SIGHUP)")

    def close(self) -> None:
        """Flush and close every log file."""
        for handler in self.handlers.values():
            handler.close()


def logging_dict(configs: Sequence[NodeConfig], level: str | None = None) -> dict[str, Any]:
    """The :func:`logging.config.dictConfig` dictionary for the nodes ``configs``
    of this process; ``level`` (``"debug"``..``"error"``) overrides every node's."""
    levels = {c.id: LEVELS[(level or c.log_level).lower()] for c in configs}
    lowest = min(levels.values(), key=logging.getLevelName) if levels else "INFO"
    fmt = configs[0].log_format if configs else "text"
    handlers: dict[str, Any] = {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                   "formatter": fmt},
    }
    loggers: dict[str, Any] = {}
    files = []
    for c in configs:
        node_handlers = []
        if c.log_file is not None:
            name = f"file_{c.id}"
            handlers[name] = {"()": ReopenableFileHandler, "filename": str(c.log_file),
                              "encoding": "utf-8", "formatter": c.log_format}
            node_handlers.append(name)
            files.append(name)
        loggers[f"wa_relay.node.{c.id}"] = {"level": levels[c.id], "handlers": node_handlers,
                                            "propagate": True}
    loggers["wa_relay"] = {"level": lowest, "handlers": ["stderr"], "propagate": False}
    loggers["storage"] = {"level": lowest, "handlers": ["stderr", *files], "propagate": False}
    loggers["trio.serve_listeners"] = {"level": "WARNING", "handlers": ["stderr", *files],
                                       "filters": ["accept_errors"], "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"text": {"format": TEXT_FORMAT}, "json": {"()": JsonFormatter}},
        "filters": {"accept_errors": {"()": RateLimitFilter}},
        "handlers": handlers, "loggers": loggers,
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure_logging(configs: Sequence[NodeConfig], level: str | None = None) -> LogFiles:
    """Set up logging for the nodes ``configs`` of this process (see the module doc).

    Returns:
        The log files, to :meth:`~LogFiles.reopen` on ``SIGHUP``.

    Raises:
        OSError: a log file cannot be opened (its directory is missing or not writable).
    """
    try:
        logging.config.dictConfig(logging_dict(configs, level))
    except ValueError as exc:  # dictConfig wraps the handler's OSError
        cause = exc.__cause__
        if isinstance(cause, OSError):
            raise cause from None
        raise
    found = {name: h for name in (f"wa_relay.node.{c.id}" for c in configs)
             for h in logging.getLogger(name).handlers if isinstance(h, ReopenableFileHandler)}
    return LogFiles(found)
