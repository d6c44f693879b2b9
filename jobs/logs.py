"""Structured logs: events with fields, written as key=value text (default) or JSON lines.

`PRUNEBOARD_LOG_FORMAT=json` makes every log record one JSON object per line (ts, level, logger,
msg, and the event's fields), for log shippers; the default stays human-readable text with the
fields appended as key=value.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["event", "formatter", "JsonFormatter", "TextFormatter"]

_FIELDS = "pb_fields"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event `name` with `fields` (the text form is "name k=v ...")."""
    text = " ".join([name, *(f"{key}={_text(value)}" for key, value in fields.items())])
    logger.log(level, "%s", text, extra={_FIELDS: {"event": name, **fields}})


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (UTC timestamps); an event's fields become top-level keys."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, _FIELDS, None)
        if fields:
            data.update(fields)
        else:
            data["msg"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def formatter() -> logging.Formatter:
    """The formatter PRUNEBOARD_LOG_FORMAT asks for ("json" or "text")."""
    return JsonFormatter() if os.environ.get("PRUNEBOARD_LOG_FORMAT", "").lower() == "json" else TextFormatter()
