"""Loopback HTTP sandbox that emulates ad-platform APIs for tests and the demo.

One :class:`SandboxServer` (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) hosts several
platform *apps*. Each app claims a path prefix (Meta Graph: ``/v<major>.<minor>/...``; TikTok
``/open_api/v1.3/...``) and owns its state. The types an app and the server exchange live in
:mod:`audience_sync.sandbox.base`, so apps never import this module. The server itself provides what
every platform shares:

* routing, request parsing (query string, form, JSON and multipart bodies);
* the request log (``GET /_sandbox/requests``), with secrets redacted;
* fault injection (``/_sandbox/faults``): answer an error, delay, or cut the connection;
* the URL-length limit: a request whose target (path + query, as sent) is longer than
  ``max_url_bytes`` is read in full and then the connection is closed **without a response**.
  The client sees ``RemoteDisconnected`` / ``ConnectionError``, which is what real uploads see
  when Meta's front end refuses an over-long ``DELETE /{id}/users`` URL (python-sdk#717);
* persistence of every app's state to ``state_file`` (JSON, temp file + rename) after each
  mutating request, so a second sandbox process continues where the first stopped.

Inspection endpoints (no token, never logged): ``GET /_sandbox/health``,
``GET /_sandbox/requests[?since=N&platform=P]``, ``POST /_sandbox/reset``,
``GET|POST|DELETE /_sandbox/faults``, and ``/_sandbox/<platform>/...`` handled by the app.

No Airflow imports here: the sandbox must start in a plain Python process.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from audience_sync.destinations.grpc_common import is_loopback
from audience_sync.sandbox.base import (
    FaultRule,
    Journal,
    PlatformApp,
    SandboxRequest,
    SandboxResponse,
    json_response,
    redact_query,
)
from audience_sync.sandbox.google_ads import GoogleAdsSandbox
from audience_sync.sandbox.google_datamanager import DataManagerSandbox
from audience_sync.sandbox.grpc_host import GrpcApp, GrpcHost
from audience_sync.sandbox.meta import MetaSandbox
from audience_sync.sandbox.tiktok import TikTokSandbox

log = logging.getLogger("audience_sync.sandbox")

DEFAULT_MAX_URL_BYTES = 16384
"""Longest request target (path + query, percent-encoded) accepted. Real front ends cut off
somewhere around 16-20 KB; longer URLs are dropped without a response."""

_HARD_LINE_LIMIT = 8 * 1024 * 1024
STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Drop(Exception):
    """Close the connection without writing a response."""


def _last_values(parsed: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in parsed.items()}


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    form: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return form, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (filename, payload)
        else:
            form[str(name)] = payload.decode(part.get_content_charset() or "utf-8", "replace")
    return form, files


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "audience-sync-sandbox"
    timeout = 120
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox %s - %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        # Same as the stdlib version, but without its fixed 64 KiB request-line limit: over-long
        # URLs are handled by the configurable max_url_bytes rule instead.
        try:
            self.raw_requestline = self.rfile.readline(_HARD_LINE_LIMIT + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > _HARD_LINE_LIMIT:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            try:
                self._dispatch()
            except _Drop:
                self.close_connection = True
                return
            self.wfile.flush()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("sandbox connection ended: %s", exc)
            self.close_connection = True

    # ------------------------------------------------------------------ request handling

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return b""
        return self.rfile.read(size) if size > 0 else b""

    def _build_request(self, body: bytes) -> SandboxRequest:
        split = urlsplit(self.path)
        query = _last_values(parse_qs(split.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type", "")
        form: dict[str, str] = {}
        files: dict[str, tuple[str, bytes]] = {}
        json_body: Any = None
        if body:
            if content_type.startswith("application/x-www-form-urlencoded"):
                form = _last_values(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
            elif content_type.startswith("multipart/form-data"):
                form, files = _parse_multipart(content_type, body)
            elif content_type.startswith("application/json"):
                try:
                    json_body = json.loads(body)
                except ValueError:
                    json_body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        return SandboxRequest(
            method=self.command,
            path=split.path,
            query=query,
            form=form,
            json_body=json_body,
            files=files,
            headers=headers,
            host=host,
            raw_body=body,
        )

    def _dispatch(self) -> None:
        body = self._read_body()
        srv = self.server.sandbox
        target_len = len(self.path.encode("latin-1", "replace"))
        path_only = urlsplit(self.path).path
        if path_only.startswith("/_sandbox/") or path_only == "/_sandbox":
            self._send(srv.handle_control(self._build_request(body)))
            return
        app = srv.app_for(path_only)
        if app is None:
            self._send(json_response(404, {"error": {"message": f"no sandbox platform serves {path_only}"}}))
            return
        if target_len > srv.max_url_bytes:
            srv.journal.log.append(
                {
                    "platform": app.platform,
                    "method": self.command,
                    "path": path_only,
                    "query": {},
                    "status": None,
                    "fault": "url_too_long",
                    "url_bytes": target_len,
                    "time": time.time(),
                }
            )
            log.info(
                "sandbox: dropping %s %s: URL is %d bytes (> %d)",
                self.command,
                path_only,
                target_len,
                srv.max_url_bytes,
            )
            raise _Drop
        request = self._build_request(body)
        self._send(srv.handle_platform(app, request))

    def _send(self, response: SandboxResponse | None) -> None:
        if response is None:
            raise _Drop
        payload = json.dumps(response.body, separators=(",", ":")).encode("utf-8")
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: SandboxServer

    def __init__(self, address: tuple[str, int], sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------
# The server object


class SandboxServer:
    """A running sandbox. Use :func:`start_sandbox` to create one.

    Attributes: ``url`` (``http://host:port``, the Graph base URL), ``grpc_target`` (``host:port``
    of the gRPC apps, None without any), ``meta`` (the Meta app), ``journal`` (request log + faults),
    ``state_file``.
    """

    def __init__(
        self,
        apps: Iterable[PlatformApp],
        host: str = "127.0.0.1",
        port: int = 0,
        state_file: str | os.PathLike[str] | None = None,
        max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
        grpc_port: int | None = None,
    ) -> None:
        self.journal = Journal()
        self.apps: list[PlatformApp] = list(apps)
        for app in self.apps:
            app.bind(self.journal)
        self.max_url_bytes = max_url_bytes
        self.state_file = Path(state_file) if state_file else None
        self._save_lock = threading.Lock()
        if self.state_file is not None:
            self._load(self.state_file)
            self.journal.on_change = self.save_state
        if not is_loopback(host):
            log.warning(
                "sandbox: binding %s, which is not a loopback address; the /_sandbox/ "
                "endpoints have no authentication",
                host,
            )
        self._httpd = _HTTPServer((host, port), self)
        bound_host, bound_port = self._httpd.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.url = f"http://{shown}:{bound_port}"
        self.host = str(bound_host)
        self.port = int(bound_port)
        # the gRPC apps share one port: grpc_port, else the next one after a fixed HTTP port, else any
        grpc_apps = [app for app in self.apps if isinstance(app, GrpcApp)]
        self._grpc: GrpcHost | None = None
        self.grpc_target: str | None = None
        if grpc_apps:
            wanted = grpc_port if grpc_port is not None else (port + 1 if port else 0)
            self._grpc = GrpcHost(grpc_apps, self.journal, self.save_state, self.host, wanted)
            self.grpc_target = self._grpc.target
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -------------------------------------------------------------- lifecycle

    def start(self) -> SandboxServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"audience-sync-sandbox:{self.port}",
                daemon=True,
            )
            self._thread.start()
            if self._grpc is not None:
                self._grpc.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open keep-alive connections and release the port. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        self._httpd.close_all_connections()
        if self._grpc is not None:
            self._grpc.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- apps

    def app(self, platform: str) -> PlatformApp:
        for app in self.apps:
            if app.platform == platform:
                return app
        raise KeyError(f"no sandbox app for platform {platform!r}")

    @property
    def meta(self) -> Any:
        """The :class:`audience_sync.sandbox.meta.MetaSandbox` state object."""
        return self.app("meta")

    def app_for(self, path: str) -> PlatformApp | None:
        for app in self.apps:
            if app.matches(path):
                return app
        return None

    # -------------------------------------------------------------- persistence

    def save_state(self) -> None:
        if self.state_file is None:
            return
        with self._save_lock:
            state = {
                "version": STATE_VERSION,
                "platforms": {app.platform: app.dump_state() for app in self.apps},
            }
            directory = self.state_file.parent
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.state_file.name}.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(state, fh, separators=(",", ":"))
                os.replace(tmp, self.state_file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(
                f"sandbox state file {path} is not valid JSON: {exc}. "
                "Delete it to start from an empty sandbox."
            ) from exc
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"sandbox state file {path} has an unsupported format "
                f"(expected version {STATE_VERSION}). Delete it to start fresh."
            )
        platforms = state.get("platforms") or {}
        for app in self.apps:
            if app.platform in platforms:
                app.load_state(platforms[app.platform])

    # -------------------------------------------------------------- request handling

    def handle_platform(self, app: PlatformApp, request: SandboxRequest) -> SandboxResponse | None:
        """Apply faults, let the app answer, log the exchange. ``None`` means drop the connection."""
        rule = self.journal.faults.match(app.platform, request.method, request.path)
        entry: dict[str, Any] = {
            "platform": app.platform,
            "method": request.method,
            "path": request.path,
            "query": redact_query(request.query),
            "time": time.time(),
        }
        if rule is not None:
            entry["fault"] = rule.action
            entry["fault_id"] = rule.id
            if rule.action == "delay" and rule.delay_seconds:
                time.sleep(rule.delay_seconds)
            elif rule.action == "error":
                response = app.fault_response(rule, request)
                self._log(entry, response)
                return response
            elif rule.action == "drop" and not rule.apply:
                entry["status"] = None
                entry["applied"] = False
                self.journal.log.append(entry)
                return None
        try:
            response = app.handle(request)
        except Exception:
            log.exception("sandbox: %s handler failed on %s %s", app.platform, request.method, request.path)
            response = json_response(500, {"error": {"message": "sandbox internal error", "code": 1}})
        if response.mutated:
            self.save_state()
        if rule is not None and rule.action == "drop":
            entry["applied"] = True
            self._log(entry, response)
            return None
        self._log(entry, response)
        return response

    def _log(self, entry: dict[str, Any], response: SandboxResponse) -> None:
        entry["status"] = response.status
        entry.update(response.log)
        if entry.get("fault") == "drop":
            entry["response_status"] = response.status
            entry["status"] = None
        self.journal.log.append(entry)

    def handle_control(self, request: SandboxRequest) -> SandboxResponse:
        parts = [p for p in request.path.split("/") if p][1:]  # drop "_sandbox"
        method = request.method
        try:
            if parts == ["health"] and method == "GET":
                return json_response(
                    200,
                    {
                        "status": "ok",
                        "platforms": [a.platform for a in self.apps],
                        "url": self.url,
                        "grpc_target": self.grpc_target,
                    },
                )
            if parts == ["requests"] and method == "GET":
                since = int(request.query.get("since", "0") or 0)
                platform = request.query.get("platform") or None
                return json_response(
                    200,
                    {
                        "data": self.journal.log.entries(since, platform),
                        "last_seq": self.journal.log.last_seq,
                    },
                )
            if parts == ["reset"] and method == "POST":
                self.reset()
                return json_response(200, {"success": True})
            if parts == ["faults"]:
                if method == "GET":
                    return json_response(200, {"data": self.journal.faults.rules()})
                if method == "DELETE":
                    return json_response(200, {"success": True, "cleared": self.journal.faults.clear()})
                if method == "POST":
                    body = request.json_body if request.json_body is not None else dict(request.form)
                    if not isinstance(body, dict):
                        raise ValueError("fault rule must be a JSON object")
                    rule = self.journal.faults.add(FaultRule.from_dict(body))
                    return json_response(200, rule.to_dict())
            if parts:
                for app in self.apps:
                    if app.platform == parts[0]:
                        answer = app.inspect(request, parts[1:])
                        if answer is not None:
                            if answer.mutated:
                                self.save_state()
                            return answer
        except (ValueError, TypeError, KeyError) as exc:
            return json_response(400, {"error": {"message": str(exc)}})
        return json_response(404, {"error": {"message": f"unknown sandbox endpoint {method} {request.path}"}})

    def reset(self) -> None:
        """Clear every platform's state, all fault rules and the request log."""
        for app in self.apps:
            app.reset()
        self.journal.faults.clear()
        self.journal.log.clear()
        self.save_state()


# --------------------------------------------------------------------------------------------
# Public entry points


def _default_apps(
    access_token: str | None, app_secret: str | None, replace_timeout_seconds: float
) -> list[PlatformApp]:
    """One app per emulated platform."""
    return [
        MetaSandbox(
            access_token=access_token, app_secret=app_secret, replace_timeout_seconds=replace_timeout_seconds
        ),
        DataManagerSandbox(access_token=access_token),
        GoogleAdsSandbox(access_token=access_token),
        TikTokSandbox(access_token=access_token),
    ]


def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    state_file: str | os.PathLike[str] | None = None,
    access_token: str | None = "sandbox-token",
    *,
    app_secret: str | None = None,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    replace_timeout_seconds: float = 5400.0,
) -> SandboxServer:
    """Start the sandbox in a daemon thread and return it (also a context manager).

    :param port: 0 picks a free port; read it back from ``srv.url``.
    :param state_file: JSON file loaded at start (if present) and rewritten after every mutation.
    :param access_token: the only token Graph calls accept; ``None`` accepts any non-empty token.
    :param app_secret: when set, a supplied ``appsecret_proof`` must equal HMAC-SHA256(secret, token).
    :param max_url_bytes: longer request targets are dropped without a response.
    :param replace_timeout_seconds: an unfinished ``usersreplace`` session expires after this long.
    """
    apps = _default_apps(access_token, app_secret, replace_timeout_seconds)
    server = SandboxServer(apps, host=host, port=port, state_file=state_file, max_url_bytes=max_url_bytes)
    return server.start()


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    state_file: str | os.PathLike[str] | None = None,
    access_token: str | None = "sandbox-token",
    *,
    app_secret: str | None = None,
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    replace_timeout_seconds: float = 5400.0,
    ready: Callable[[SandboxServer], None] | None = None,
) -> None:
    """Run the sandbox until SIGINT/SIGTERM (blocking). Prints ``sandbox listening on <url>`` (and
    ``sandbox gRPC on <host:port>`` when it serves gRPC platforms) once the ports are bound (or calls ``ready(server)`` instead when given)."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    server = start_sandbox(
        host,
        port,
        state_file,
        access_token,
        app_secret=app_secret,
        max_url_bytes=max_url_bytes,
        replace_timeout_seconds=replace_timeout_seconds,
    )
    try:
        if ready is not None:
            ready(server)
        else:
            print(f"sandbox listening on {server.url}", flush=True)
            if server.grpc_target:  # the gRPC platforms (Google): a connection's host points here
                print(f"sandbox gRPC on {server.grpc_target}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
