"""The listening socket both servers bind themselves (port 0 picks a free one they then print).

It is never inherited (Python's default, kept): a replica or warm-pool standby holding the
activator's listening socket would keep it open after the activator closes it to drain, and the
kernel would go on taking connections nobody answers.
"""

from __future__ import annotations

import socket


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
