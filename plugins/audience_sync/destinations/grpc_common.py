"""What the gRPC destinations (Google's two APIs) share: loopback endpoints, and the statuses a retry fixes."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc
from google.auth.transport.grpc import AuthMetadataPlugin
from google.auth.transport.requests import Request

#: requests and answers of up to 64 MiB (a batch of 10,000 members with every identifier)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

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


def loopback_channel(endpoint: str, credentials: Any) -> grpc.Channel:
    """A channel to a loopback endpoint (the local sandbox) without TLS that still carries the
    credentials' bearer token on every call: gRPC's local channel credentials with google-auth's own
    call-credentials plugin (which refreshes the token when due)."""
    auth = grpc.metadata_call_credentials(AuthMetadataPlugin(credentials, Request()))
    local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    creds = grpc.composite_channel_credentials(local, auth)
    return grpc.secure_channel(endpoint, creds, options=CHANNEL_OPTIONS)
