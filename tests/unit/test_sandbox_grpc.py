"""The sandbox's gRPC hosting (sandbox/grpc_host.py): a small app over a real channel on loopback."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from audience_sync.sandbox.base import FaultRule
from audience_sync.sandbox.grpc_host import GrpcApp, Rpc, RpcAbort, RpcCall
from audience_sync.sandbox.meta import MetaSandbox
from audience_sync.sandbox.server import SandboxServer

SERVICE = "test.sandbox.v1.Counter"


def _identity(data: bytes) -> bytes:
    return data


class CounterApp(GrpcApp):
    """Keeps a list of words: ``Add`` appends one, ``List`` streams them, ``Fail`` always aborts."""

    platform = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []

    def rpcs(self) -> list[Rpc]:
        return [
            Rpc(SERVICE, "Add", self._add, _identity, _identity),
            Rpc(SERVICE, "List", self._list, _identity, _identity, streaming=True),
            Rpc(SERVICE, "Fail", self._fail, _identity, _identity),
        ]

    def _add(self, request: bytes, call: RpcCall) -> bytes:
        self.words.append(request.decode())
        call.mutated = True
        call.log["op"] = "add"
        return str(len(self.words)).encode()

    def _list(self, request: bytes, call: RpcCall) -> list[bytes]:
        return [w.encode() for w in self.words]

    def _fail(self, request: bytes, call: RpcCall) -> bytes:
        call.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad word", [("detail-bin", b"\x01\x02")])

    def fault_abort(self, rule: FaultRule, call: RpcCall) -> RpcAbort:
        if rule.subcode == 7:  # an app attaches its own error details
            return RpcAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", [("quota-bin", b"7")])
        return super().fault_abort(rule, call)

    def forget(self) -> None:
        self.words = []

    def dump_state(self) -> dict[str, Any]:
        return {"words": self.words}

    def load_state(self, state: dict[str, Any]) -> None:
        self.words = list(state.get("words", []))


@pytest.fixture
def server(tmp_path):
    srv = SandboxServer([MetaSandbox(), CounterApp()], state_file=tmp_path / "state.json").start()
    try:
        yield srv
    finally:
        srv.stop()


def _stubs(target: str) -> tuple[grpc.Channel, Any, Any, Any]:
    channel = grpc.insecure_channel(target)
    add = channel.unary_unary(f"/{SERVICE}/Add", _identity, _identity)
    listing = channel.unary_stream(f"/{SERVICE}/List", _identity, _identity)
    fail = channel.unary_unary(f"/{SERVICE}/Fail", _identity, _identity)
    return channel, add, listing, fail


def test_calls_are_served_logged_and_persisted(server, tmp_path):
    channel, add, listing, _fail = _stubs(server.grpc_target)
    with channel:
        assert (
            add(b"alpha", metadata=[("authorization", "Bearer secret"), ("login-customer-id", "123")]) == b"1"
        )
        assert add(b"beta") == b"2"
        assert list(listing(b"")) == [b"alpha", b"beta"]
    entries = server.journal.log.entries(platform="counter")
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("RPC", f"/{SERVICE}/Add", "OK"),
        ("RPC", f"/{SERVICE}/Add", "OK"),
        ("RPC", f"/{SERVICE}/List", "OK"),
    ]
    assert entries[0]["op"] == "add"
    assert entries[0]["query"]["login-customer-id"] == "123"
    assert "authorization" not in entries[0]["query"]  # secrets never reach the log
    # a second sandbox on the same state file continues where the first stopped
    server.stop()
    again = SandboxServer([MetaSandbox(), CounterApp()], state_file=tmp_path / "state.json").start()
    try:
        channel, _add, listing, _fail = _stubs(again.grpc_target)
        with channel:
            assert list(listing(b"")) == [b"alpha", b"beta"]
    finally:
        again.stop()


def test_handler_abort_carries_status_and_trailers(server):
    channel, _add, _listing, fail = _stubs(server.grpc_target)
    with channel, pytest.raises(grpc.RpcError) as caught:
        fail(b"x")
    err = caught.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "bad word"
    assert ("detail-bin", b"\x01\x02") in tuple(err.trailing_metadata())
    assert server.journal.log.entries(platform="counter")[-1]["status"] == "INVALID_ARGUMENT"


def test_fault_rules_apply_to_rpcs(server):
    app = server.app("counter")
    channel, add, _listing, _fail = _stubs(server.grpc_target)
    with channel:
        app.add_fault(action="error", method="RPC", path_regex="/Add$", code=14, message="try later")
        with pytest.raises(grpc.RpcError) as caught:
            add(b"lost")
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert app.words == []  # an error fault answers before the handler runs

        app.add_fault(action="error", method="RPC", path_regex="/Add$", subcode=7)
        with pytest.raises(grpc.RpcError) as caught:
            add(b"quota")
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("quota-bin", b"7") in tuple(caught.value.trailing_metadata())

        app.add_fault(action="drop", method="RPC", path_regex="/Add$", apply=True)
        with pytest.raises(grpc.RpcError) as caught:
            add(b"applied")
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert app.words == ["applied"]  # applied, but the caller saw a failure

        assert add(b"fine") == b"2"  # every rule fired its one time
    statuses = [(e.get("fault"), e["status"]) for e in server.journal.log.entries(platform="counter")]
    assert statuses == [
        ("error", "UNAVAILABLE"),
        ("error", "RESOURCE_EXHAUSTED"),
        ("drop", "UNAVAILABLE"),
        (None, "OK"),
    ]


def test_a_fixed_http_port_puts_grpc_on_the_next_one():
    probe = SandboxServer([CounterApp()])  # find a free port pair by asking the OS for one
    http_port = probe.port
    probe.stop()
    srv = SandboxServer([CounterApp()], port=http_port).start()
    try:
        assert srv.grpc_target == f"127.0.0.1:{http_port + 1}"
    finally:
        srv.stop()


def test_no_grpc_apps_no_grpc_port():
    srv = SandboxServer([MetaSandbox()])
    try:
        assert srv.grpc_target is None
    finally:
        srv.stop()
