"""Logging of the `ecefl` command (its `preprocess` stage included): timestamped lines on stderr at the level of
--log-level, so that stdout carries a command's results (a job id, paths, the metrics table).

Only the commands configure this. Inside NVFlare's site and server processes nothing here runs: the site's logger
("ecefl.site") goes through NVFlare's own logging into the job's log files.
"""
from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message (a redirected or captured stream), not as it was at set-up."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure(level: str = "INFO") -> None:
    """One stderr handler per package logger; configuring twice (several commands in one process) replaces it."""
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    for name in ("ecefl", "site_preprocess"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _CurrentStderr)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False  # NVFlare's simulator configures the root logger: no line twice
