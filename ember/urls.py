"""A running activator's address as a user gives it: ``http://HOST:PORT``, or ``HOST:PORT`` as
``ember up`` prints it without the scheme."""

from __future__ import annotations


def activator_base(url: str) -> str:
    """``url`` without a trailing slash, ``http://`` added when it names no scheme."""
    base = url.rstrip("/")
    return base if "://" in base else f"http://{base}"
