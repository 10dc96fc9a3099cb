"""No credential survives a log line; JSON lines carry a record whole from a replica."""

from __future__ import annotations

import logging

import pytest

from contracts.logs import JsonFormatter, Record, RedactingFilter, decode_record, redact

SECRETS = [
    "Authorization: Bearer api-token-0123456789abcdef",
    "{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAXYZ/20261129/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "ab12" * 16 + "'}",
    "GET http://s3/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAXYZ%2F2026"
    "&X-Amz-Signature=" + "cd34" * 16 + "&X-Amz-Security-Token=FQoGZXIvYXdzEJr",
    "GET /b/k?AWSAccessKeyId=AKIAXYZ&Signature=ab12ab12%2B&x-amz-security-token=FQoGZX&Expires=1",
    "{'aws_secret_access_key': 'wJalrXUtnFEMIK7MDENG', 'region': 'us-east-1'}",
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENG",
]
LEAKS = ["api-token-0123456789abcdef", "AKIAXYZ", "ab12ab12", "cd34cd34", "FQoGZX", "wJalrX"]


@pytest.mark.parametrize("line", SECRETS)
def test_redact_masks_tokens_signatures_and_keys(line: str) -> None:
    clean = redact(line)
    assert "***" in clean
    assert not [leak for leak in LEAKS if leak in clean], clean


def test_redact_leaves_ordinary_lines_alone() -> None:
    line = "model 'mlp': fetched 1.2 GB from s3://models/mlp in 3.1 s (0.39 GB/s)"
    assert redact(line) == line


def test_the_filter_cleans_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %s", (SECRETS[0],), None)
    assert RedactingFilter().filter(record)
    assert "api-token" not in record.getMessage()
    try:
        raise RuntimeError(SECRETS[3])
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter().filter(record)
    assert record.exc_text and "wJalrX" not in record.exc_text and "RuntimeError" in record.exc_text


def test_a_json_line_carries_level_logger_message_and_traceback_redacted() -> None:
    try:
        raise RuntimeError(SECRETS[5])
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "ember.runtime", logging.ERROR, __file__, 1, "model %s failed", ("m",), sys.exc_info()
        )
    RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line
    decoded = decode_record(line.encode() + b"\n")
    assert decoded is not None
    assert (decoded.level, decoded.logger, decoded.message) == (
        logging.ERROR,
        "ember.runtime",
        "model m failed",
    )
    assert decoded.exc and "RuntimeError" in decoded.exc and "wJalrX" not in decoded.exc


@pytest.mark.parametrize(
    "line",
    [
        b"plain text",
        b"{not json",
        b"[1, 2]",
        b'{"level": "LOUD", "logger": "x", "message": "m"}',
        b'{"level": "INFO", "logger": 1, "message": "m"}',
        b'{"level": "INFO", "logger": "x"}',
        b'{"level": "INFO", "logger": "x", "message": "m", "exc": 3}',
    ],
)
def test_a_line_that_is_no_record_decodes_to_none(line: bytes) -> None:
    assert decode_record(line) is None


def test_a_record_without_traceback() -> None:
    line = b'{"level": "WARNING", "logger": "uvicorn.error", "message": "hi"}'
    assert decode_record(line) == Record(logging.WARNING, "uvicorn.error", "hi")
