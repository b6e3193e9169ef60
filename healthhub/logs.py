"""Logging: one JSON object per line (``HEALTHHUB_LOG_FORMAT=json``, the default of the server
commands) or plain text, each record carrying the id of the request it belongs to.

What is logged never holds patient data: the access log names the route (``/fhir/<rtype>/<rid>``),
never the path or the query string (``Patient?name=…&birthdate=…`` is personal data), and the
hub's own messages name resources by type and count. The audit trail (``audit_events``) is where
who-read-what is kept, under access control — not the log.
"""
from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

#: The current request's id (``-`` outside a request: start-up, workers, MLLP).
request_id: ContextVar[str] = ContextVar("healthhub_request_id", default="-")
#: An ``X-Request-ID`` from a load balancer is kept when it looks like an id, else a new one is made.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Attributes every LogRecord has; anything else was passed in ``extra=`` and is output as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Stamped when the record is made, in the request's context (a handler may format it later).
    record = _make_record(*args, **kwargs)
    record.request_id = request_id.get()
    return record


_make_record = logging.getLogRecordFactory()
logging.setLogRecordFactory(_stamped)


def new_request_id(incoming: str | None) -> str:
    return incoming if incoming and _SANE_ID.fullmatch(incoming) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "pid", "message", "request_id", …extra fields, "exception"}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "pid": record.process, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k != "request_id"
                    and not k.startswith("_")})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(fmt: str, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``fmt`` (``json`` or ``text``)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
