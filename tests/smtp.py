"""A real SMTP server on loopback for the alert tests (aiosmtpd), and what it received."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every connection at INFO


@dataclass
class Inbox:
    """The messages the server accepted, in order (parsed)."""

    messages: list[EmailMessage] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self.arrived.notify_all()
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def bodies(self) -> list[str]:
        return [m.get_body(("html", "plain")).get_content() for m in self.messages]  # type: ignore[union-attr]


@contextmanager
def smtp_server(conn_id: str = "smtp_alerts") -> Iterator[Inbox]:
    """Serve SMTP on a free loopback port; ``AIRFLOW_CONN_<conn_id>`` points at it while it runs."""
    inbox = Inbox()
    with socket.socket() as probe:  # a free port: aiosmtpd checks readiness by connecting to its port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    before = os.environ.get(var)
    os.environ[var] = json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": controller.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com"},
        }
    )
    try:
        yield inbox
    finally:
        controller.stop()
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before
