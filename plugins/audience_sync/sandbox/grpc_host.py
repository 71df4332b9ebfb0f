"""gRPC for the sandbox: platform apps whose real clients speak gRPC (Google Ads, Data Manager).

A :class:`GrpcApp` is a :class:`~audience_sync.sandbox.base.PlatformApp` that lists its methods as
:class:`Rpc` values instead of claiming HTTP paths. :class:`GrpcHost` serves every such app of one
sandbox on one loopback port (``grpc.server``, insecure: the hooks reach it through an endpoint
override) and gives gRPC calls what HTTP requests get from the sandbox server: the same request log
(``method`` is ``"RPC"``, ``path`` is ``/package.Service/Method``, ``status`` the gRPC status name),
the same fault rules (match them with ``method="RPC"`` and a ``path_regex`` on the method path), and
state persisted after every call that changed it.

Fault actions on a gRPC call: ``error`` ends the call with the app's :meth:`GrpcApp.fault_abort`
(by default the rule's ``code`` as a gRPC status number, UNAVAILABLE when unset); ``delay`` sleeps
first; ``drop`` ends the call with UNAVAILABLE, after applying it when ``apply`` is set (the
client then cannot know whether the call took effect, as with a connection lost mid-answer).

No Airflow imports here (the sandbox runs in a plain Python process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from audience_sync.sandbox.base import FaultRule, PlatformApp, SandboxRequest, SandboxResponse

if TYPE_CHECKING:
    from audience_sync.sandbox.base import Journal

log = logging.getLogger("audience_sync.sandbox")

#: the request log's ``method`` for a gRPC call (fault rules match it too)
RPC_METHOD = "RPC"
#: metadata keys never written to the request log
SECRET_METADATA = frozenset({"authorization", "developer-token"})


class RpcAbort(Exception):
    """End the call with a gRPC status, a message and trailing metadata (raised by handlers)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        trailers: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailers = tuple(trailers)


@dataclass
class RpcCall:
    """One call as a handler sees it: the caller's metadata, and what the handler reports back."""

    path: str
    #: invocation metadata, keys lower-case (a repeated key keeps its last value)
    metadata: dict[str, str | bytes]
    #: fields added to this call's request-log entry (e.g. ``op``, ``rows``)
    log: dict[str, Any] = field(default_factory=dict)
    #: set by a handler that changed the app's state (the sandbox then persists it)
    mutated: bool = False

    def abort(
        self, code: grpc.StatusCode, message: str, trailers: Sequence[tuple[str, str | bytes]] = ()
    ) -> NoReturn:
        raise RpcAbort(code, message, trailers)


@dataclass(frozen=True)
class Rpc:
    """One gRPC method of an app.

    :param service: the full service name, e.g. ``google.ads.datamanager.v1.IngestionService``.
    :param handler: ``(request, call) -> response``; for a streaming method, an iterable of responses.
    :param request_deserializer: bytes -> request (a proto-plus class's ``deserialize``).
    :param response_serializer: response -> bytes (a proto-plus class's ``serialize``).
    :param streaming: a unary-stream method (``SearchStream``).
    """

    service: str
    method: str
    handler: Callable[[Any, RpcCall], Any]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


class GrpcApp(PlatformApp):
    """A platform emulated over gRPC. Subclasses set ``platform`` and implement :meth:`rpcs` and the
    state hooks (``reset``, ``dump_state``, ``load_state``)."""

    def matches(self, path: str) -> bool:
        return False  # no HTTP paths: calls arrive through GrpcHost

    def handle(self, request: SandboxRequest) -> SandboxResponse:  # pragma: no cover - never routed
        raise NotImplementedError(f"{self.platform} is served over gRPC only")

    def rpcs(self) -> list[Rpc]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fault_abort(self, rule: FaultRule, call: RpcCall) -> RpcAbort:
        """The error an ``error`` fault rule answers (default: the rule's ``code`` as a gRPC status
        number, UNAVAILABLE when unset). Apps override it to attach their platform's error details."""
        code = _status(rule.code) if rule.code is not None else grpc.StatusCode.UNAVAILABLE
        return RpcAbort(code, rule.message or f"sandbox fault {rule.id}")


def _status(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise ValueError(f"{number} is not a gRPC status code (0-16)")


class GrpcHost:
    """Serves the gRPC apps of one sandbox on ``host:port`` (port 0: any free port).

    :param save_state: called after a call that changed an app's state.
    """

    def __init__(
        self,
        apps: Iterable[GrpcApp],
        journal: Journal,
        save_state: Callable[[], None],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.apps = list(apps)
        self.journal = journal
        self._save_state = save_state
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="audience-sync-sandbox-grpc"),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        for app in self.apps:
            by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
            for rpc in app.rpcs():
                by_service.setdefault(rpc.service, {})[rpc.method] = self._handler(app, rpc)
            for service, methods in by_service.items():
                self._server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service, methods),)
                )
        bound = self._server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"sandbox: cannot bind gRPC on {host}:{port}")
        shown = f"[{host}]" if ":" in host else host
        self.target = f"{shown}:{bound}"
        self.port = bound

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    def _handler(self, app: GrpcApp, rpc: Rpc) -> grpc.RpcMethodHandler:
        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            return self._call(app, rpc, request, context)

        def stream(request: Any, context: grpc.ServicerContext) -> Iterable[Any]:
            yield from self._call(app, rpc, request, context)

        kind = grpc.unary_stream_rpc_method_handler if rpc.streaming else grpc.unary_unary_rpc_method_handler
        return kind(
            stream if rpc.streaming else unary,
            request_deserializer=rpc.request_deserializer,
            response_serializer=rpc.response_serializer,
        )

    def _call(self, app: GrpcApp, rpc: Rpc, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = {k.lower(): v for k, v in context.invocation_metadata()}
        call = RpcCall(rpc.path, metadata)
        entry: dict[str, Any] = {
            "platform": app.platform,
            "method": RPC_METHOD,
            "path": rpc.path,
            "query": {k: v for k, v in metadata.items() if k not in SECRET_METADATA and isinstance(v, str)},
            "time": time.time(),
        }
        rule = self.journal.faults.match(app.platform, RPC_METHOD, rpc.path)
        if rule is not None:
            entry.update(fault=rule.action, fault_id=rule.id)
            if rule.action == "delay" and rule.delay_seconds:
                time.sleep(rule.delay_seconds)
            elif rule.action == "error":
                self._end(context, entry, call, app.fault_abort(rule, call))
            elif rule.action == "drop" and not rule.apply:
                entry["applied"] = False
                self._end(context, entry, call, _dropped(rule))
        try:
            response = rpc.handler(request, call)
            if rpc.streaming:
                response = list(response)  # run the handler fully before answering
        except RpcAbort as abort:
            self._end(context, entry, call, abort)
        except Exception:
            log.exception("sandbox: %s handler failed on %s", app.platform, rpc.path)
            self._end(context, entry, call, RpcAbort(grpc.StatusCode.INTERNAL, "sandbox internal error"))
        if rule is not None and rule.action == "drop":
            entry["applied"] = True
            self._end(context, entry, call, _dropped(rule))
        self._finish(entry, call, "OK")
        return response

    def _end(
        self, context: grpc.ServicerContext, entry: dict[str, Any], call: RpcCall, abort: RpcAbort
    ) -> NoReturn:
        self._finish(entry, call, abort.code.name)
        if abort.trailers:
            context.set_trailing_metadata(abort.trailers)
        context.abort(abort.code, abort.message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _finish(self, entry: dict[str, Any], call: RpcCall, status: str) -> None:
        if call.mutated:
            self._save_state()
        entry["status"] = status
        entry.update(call.log)
        self.journal.log.append(entry)


def _dropped(rule: FaultRule) -> RpcAbort:
    return RpcAbort(grpc.StatusCode.UNAVAILABLE, rule.message or "sandbox: connection dropped")
