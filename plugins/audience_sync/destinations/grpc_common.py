"""What the gRPC destinations (Google's two APIs) share: loopback endpoints, and the statuses a retry fixes."""

from __future__ import annotations

import ipaddress

import grpc

#: gRPC statuses a retry can fix, when the platform's error details say nothing more
TRANSIENT_STATUSES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)


def is_loopback(endpoint: str | None) -> bool:
    """Whether ``host[:port]`` names this machine (``localhost``, ``127.0.0.1``, ``[::1]``): the local
    sandbox, reached over a plaintext channel; every other endpoint gets TLS."""
    if not endpoint:
        return False
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 or endpoint.startswith("[") else endpoint
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
