"""Logging for ``ember serve`` and ``ember up``: one format, and no credential in any line.

Two guards. The libraries that log request headers or signing material at DEBUG (botocore and
aiobotocore sign S3 requests; urllib3, httpcore, httpx and hpack log what they send) are held at
INFO even when ember runs at debug. And a filter on the handler masks what still looks like a
secret (bearer tokens, AWS signatures and credentials, presigned-URL query strings, secret keys
in a dict's repr) in whatever a line says, ours included.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal, get_args

# the levels `ember serve` and `ember up` take (--log-level, activator.log_level)
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

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


def configure(level: str) -> None:
    """Log to stderr at ``level`` through the redacting filter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
