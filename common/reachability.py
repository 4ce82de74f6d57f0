"""Why no gRPC server answers at a target, told by the network itself rather than by gRPC's message text.

gRPC reports a refused connection, a name that does not resolve and a REST port
given by mistake all as UNAVAILABLE, the reason only in its message's text.
:func:`unreachable` asks the socket layer instead, so the client's error for a
server that is not there is one line naming the cause, found in seconds.

Usage::

    from fmnist.common.reachability import unreachable

    cause = unreachable("localhost:8501")  # "127.0.0.1:8501 does not speak gRPC (…; is it the REST port?)"

Thread safety: stateless; every call opens and closes its own sockets.
"""

from __future__ import annotations

import os
import socket

_PROBE_SECONDS = 2.0  # per address: a server on this network connects in milliseconds
# What an HTTP/2 client sends first (RFC 9113, 3.4): the connection preface, then an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)
_SETTINGS = 0x04  # the frame type an HTTP/2 server's first frame has


def unreachable(target: str, *, tls: bool = False, timeout: float = _PROBE_SECONDS) -> str | None:
    """Why no gRPC server can answer at ``target``, told by the socket layer's own error types; None when some
    address accepts a connection and answers HTTP/2 (or accepts one, over TLS), or ``target`` names no host and port.

    gRPC gives all of these as UNAVAILABLE, the reason only in its message's
    text (and an IPv6 address URL-quoted, ``ipv6:%5B::1%5D``), so the client
    asks the network itself: whether the name resolves (``socket.gaierror``),
    whether each address takes a connection (``ConnectionRefusedError``, a
    timeout, or the OS's error number), and whether what answers speaks
    HTTP/2, as gRPC does: a REST port does not. One line, e.g.
    ``connection refused by [::1]:8500, 127.0.0.1:8500``.
    """
    causes: dict[str, list[str]] = {}  # a cause's wording, with {} for the addresses → those addresses
    for host, port in _host_ports(target):
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            causes.setdefault(f"the name {host} does not resolve", [])
            continue
        for family, kind, protocol, _, address in found:
            cause = _connection_cause(family, kind, protocol, address, tls=tls, timeout=timeout)
            if cause is None:
                return None  # a server is there: it may still be starting
            causes.setdefault(cause, []).append(_shown(address))
    return "; ".join(cause.format(", ".join(shown)) for cause, shown in causes.items()) or None


def _host_ports(target: str) -> list[tuple[str, int]]:
    """The (host, port) pairs ``target`` names (``host:port``, a list of them, ``[v6]:port``, ``dns:`` and
    ``ipv4:``/``ipv6:`` URIs); none for other forms (``unix:``)."""
    if target.startswith("dns:"):
        target = target.rsplit("/", 1)[-1]
    elif target.startswith(("ipv4:", "ipv6:")):
        target = target.split(":", 1)[1]
    elif ":/" in target or target.startswith(("unix:", "unix-abstract:")):
        return []
    pairs = []
    for address in target.split(","):
        host, colon, port = address.strip().rpartition(":")
        if colon and port.isdigit():
            pairs.append((host.strip("[]"), int(port)))
    return pairs


def _connection_cause(family, kind, protocol, address, *, tls: bool, timeout: float) -> str | None:
    """Why a gRPC connection to ``address`` cannot work, worded with ``{}`` where the address goes; None when
    it may."""
    with socket.socket(family, kind, protocol) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(address)
        except ConnectionRefusedError:
            return "connection refused by {}"
        except TimeoutError:
            return f"no answer from {{}} within {timeout:g}s"
        except OSError as error:
            return f"{{}}: {os.strerror(error.errno).lower() if error.errno else type(error).__name__}"
        if tls:
            return None  # the handshake is gRPC's to judge
        try:
            connection.sendall(_HTTP2_PREFACE)
            answer = connection.recv(9)
        except OSError:
            return None  # no verdict either way
        if answer and not (len(answer) >= 4 and answer[3] == _SETTINGS):
            return "{} does not speak gRPC (its answer is not HTTP/2; is it the REST port?)"
        return None


def _shown(address: tuple) -> str:
    """A socket address as people write it: ``127.0.0.1:8500``, ``[::1]:8500``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
