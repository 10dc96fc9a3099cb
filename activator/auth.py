"""Who may call the activator's routes: bearer tokens from an environment variable or a file.

Two sets: the **API** tokens guard the data plane (``/v2/...`` except the server's health routes,
which Kubernetes probes call without credentials, and ``/metrics``); the **admin** tokens guard
``/admin``. A token file holds one token per line (blank lines and ``#`` comments ignored), so a
token can be rotated by listing the old and the new one for a while. Every check compares the
presented token with every configured one in constant time (``hmac.compare_digest`` over
SHA-256 digests, so neither the length nor the position of a match shows in the timing).
:class:`Guards` holds both sets and checks a request against its path's guard
(:class:`~activator.routes.Guard`); the front door calls it once per request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from activator.errors import ConfigError, NotFound, Unauthorized
from activator.routes import Guard
from contracts.stack import ActivatorSettings

log = logging.getLogger("ember.activator")

MIN_TOKEN_CHARS = 16  # shorter ones are guessable; refuse them at start


class Tokens:
    def __init__(self, tokens: Iterable[str], source: str) -> None:
        self.source = source
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        if not self._digests:
            raise ConfigError(f"{source}: no token in it")

    @classmethod
    def load(cls, env: str | None, file: Path | None, what: str) -> Tokens | None:
        """The tokens named by ``env`` and/or ``file``; None when neither is set."""
        tokens: list[str] = []
        sources = []
        if env and os.environ.get(env):
            tokens.append(os.environ[env].strip())
            sources.append(f"${env}")
        if file is not None:
            try:
                text = file.read_text()
            except OSError as exc:
                raise ConfigError(f"{what} token file {file}: {exc.strerror or exc}") from exc
            lines = [line.strip() for line in text.splitlines()]
            found = [line for line in lines if line and not line.startswith("#")]
            if not found:
                raise ConfigError(f"{what} token file {file}: no token in it")
            tokens += found
            sources.append(str(file))
        if not tokens:
            return None
        for token in tokens:
            if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
                raise ConfigError(
                    f"{what} token from {' and '.join(sources)}: tokens need at least "
                    f"{MIN_TOKEN_CHARS} characters and no spaces"
                )
        return cls(tokens, " and ".join(sources))

    def allows(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries one of the tokens."""
        if authorization is None:
            return False
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        digest = hashlib.sha256(token.strip()).digest()
        ok = False
        for known in self._digests:  # no early exit: every token is compared
            ok |= hmac.compare_digest(digest, known)
        return ok

    def allows_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                return self.allows(value)
        return False


class Guards:
    """The API tokens (the data plane; open when none is set) and the admin tokens (the admin
    API; when none is set, open on loopback and off elsewhere)."""

    def __init__(self, settings: ActivatorSettings, host: str) -> None:
        s = settings
        self.admin_token_env = s.admin_token_env
        self.admin_tokens = Tokens.load(s.admin_token_env, s.admin_token_file, "admin")
        self.api_tokens = Tokens.load(s.api_token_env, s.api_token_file, "API")
        self.loopback = is_loopback(host)
        if self.api_tokens is None and not self.loopback:
            log.warning(
                "the data plane is open to anyone who reaches %s: set %s (or api_token_file) "
                "to require a bearer token",
                host,
                s.api_token_env,
            )

    def check(self, which: Guard, headers: list[tuple[bytes, bytes]]) -> None:
        """Unauthorized (or NotFound: the admin API is off) unless ``headers`` may pass."""
        if which is Guard.API and not self.authorized(headers):
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>'")
        if which is Guard.ADMIN:
            if self.admin_tokens is None:
                if self.loopback:
                    return  # a one-machine stack bound to loopback: only local users reach it
                raise NotFound(
                    "the admin API is off: set a token in the environment variable "
                    f"{self.admin_token_env} (or admin_token_file) to turn it on"
                )
            if not self.admin_tokens.allows_headers(headers):
                raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a data-plane request may pass (always, when no API token is set)."""
        return self.api_tokens is None or self.api_tokens.allows_headers(headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
