"""Logging for ``ember serve`` and ``ember up``: one format, and no credential in any line.

``ember serve --log-format json`` writes each record as one JSON object per line
(:class:`Record`: level, logger, message, and the traceback if any): the activator starts its
replicas so and re-logs each record at its own level (:func:`decode_record`), where a text line
would say its level only to a reader.

Two guards. The libraries that log request headers or signing material at DEBUG (botocore and
aiobotocore sign S3 requests; urllib3, httpcore, httpx and hpack log what they send) are held at
INFO even when ember runs at debug. And a filter on the handler masks what still looks like a
secret (bearer tokens, AWS signatures and credentials, presigned-URL query strings, secret keys
in a dict's repr) in whatever a line says, ours included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import Literal, get_args

# the levels `ember serve` and `ember up` take (--log-level, activator.log_level)
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)

QUIET_AT_DEBUG = ("botocore", "aiobotocore", "s3transfer", "urllib3", "httpcore", "httpx", "hpack")

_SECRETS = [
    # Authorization: Bearer <token> / AWS4-HMAC-SHA256 Credential=..., Signature=...
    (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), r"\1***"),
    (re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"), r"\1***"),
    (re.compile(r"(?i)((?:Signature|Credential|AWSAccessKeyId)=)[^,\s'\"&]+"), r"\1***"),
    (
        re.compile(
            r"(?i)((?:aws_)?(?:secret_access_key|session_token|secret|password|token)"
            r"['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}&]+"
        ),
        r"\1***",
    ),
]


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
        return True


@dataclass(frozen=True, slots=True)
class Record:
    """One log record of a process, as ``--log-format json`` writes it on a line."""

    level: int  # logging.ERROR, ...
    logger: str
    message: str
    exc: str | None = None  # the formatted traceback


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (:class:`Record`'s fields; the level by its name)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line)


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def decode_record(line: bytes | str) -> Record | None:
    """The :class:`Record` a ``--log-format json`` line carries; None for any other line (what a
    library or the interpreter printed itself)."""
    text = line.strip() if isinstance(line, str) else line.strip().decode(errors="replace")
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    level, logger, message = data.get("level"), data.get("logger"), data.get("message")
    exc = data.get("exc")
    if level not in _LEVELS or not isinstance(logger, str) or not isinstance(message, str):
        return None
    if exc is not None and not isinstance(exc, str):
        return None
    return Record(logging.getLevelNamesMapping()[level], logger, message, exc)


def configure(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` through the redacting filter, as text lines or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
