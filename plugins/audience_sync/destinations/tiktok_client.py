"""A thin ``requests`` client of the TikTok Business API v1.3: the ``Access-Token`` header, the JSON
envelope's ``code`` checked on every answer, errors mapped to transient / permanent with the fix.

TikTok answers errors with HTTP 200 and a non-zero ``code`` (reference §2.1), so the status line alone
proves nothing. Every failure is logged with TikTok's ``request_id`` (what TikTok support asks for),
never with the token or a row.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://business-api.tiktok.com/open_api/v1.3"
#: "App reaches the QPS limit" (QPS, QPM or QPD): back off and retry
RATE_LIMIT = 40100
#: the token lacks a scope (Audience Management) or the advertiser is not authorised for it
NO_PERMISSION = 40001
#: auth codes (wrong app id/secret, wrong or revoked token, expired auth code): re-authorise, never retry
AUTH_CODES = {40101, 40102, 40103, 40104, 40105, 40106, 40107, 40110}


class TikTokApiError(PermanentDestinationError):
    """A non-zero envelope code a retry cannot fix; ``message`` is TikTok's own text."""

    def __init__(self, text: str, *, code: int, api_message: str, request_id: str) -> None:
        super().__init__(text, code=code)
        self.api_message = api_message
        self.request_id = request_id


class TikTokClient:
    """Calls under ``base_url`` (the connection's host, default :data:`DEFAULT_BASE_URL`).

    :param conn_label: the Airflow connection id, named in error messages so operators know what to fix.
    :param account: the advertiser id, named in error messages.
    """

    def __init__(
        self,
        access_token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        conn_label: str = "tiktok_default",
        account: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.conn_label = conn_label
        self.account = account
        self.session = requests.Session()
        self.session.headers["Access-Token"] = access_token
        self.requests_made = 0

    def get(self, path: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        return self._call("GET", path, what, params=params)

    def post(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        return self._call("POST", path, what, json=body)

    def upload(self, path: str, form: dict[str, str], name: str, content: bytes, what: str) -> dict[str, Any]:
        """A multipart POST with one file, as ``file/upload/`` takes it."""
        return self._call("POST", path, what, data=form, files={"file": (name, content, "text/csv")})

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """The envelope's ``data`` of one request; raises a mapped error otherwise."""
        self.requests_made += 1
        url = f"{self.base_url}/{path.lstrip('/')}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            # the exception text may carry the URL, never the token (it travels in a header)
            raise TransientDestinationError(
                f"TikTok {what}: no answer ({type(exc).__name__}); will retry with backoff"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "code" not in body:
            log.warning("TikTok %s failed: HTTP %s without an envelope", what, response.status_code)
            error = TransientDestinationError if response.status_code >= 500 else PermanentDestinationError
            raise error(
                f"TikTok {what}: HTTP {response.status_code} without a JSON envelope",
                code=response.status_code,
            )
        code = int(body.get("code") or 0)
        if code == 0 and response.status_code < 400:
            return body.get("data") or {}
        request_id = str(body.get("request_id") or "")
        api_message = str(body.get("message") or "")[:300]
        log.warning("TikTok %s failed: code %s (%s), request_id %s", what, code, api_message, request_id)
        raise self._classify(code, response.status_code, api_message, request_id, what)

    def _classify(self, code: int, status: int, api_message: str, request_id: str, what: str) -> Exception:
        detail = f"TikTok {what} failed: code {code}: {api_message} (request_id {request_id})"
        if code == RATE_LIMIT or 50000 <= code < 60000 or status >= 500:
            return TransientDestinationError(f"{detail}; will retry with backoff", code=code)
        conn, acct = self.conn_label, self.account
        if code == NO_PERMISSION:
            fix = (
                f"The access token of Airflow connection '{conn}' lacks the permission: authorise the app for "
                f"advertiser {acct} with the Audience Management scope, then put the new token in the "
                "connection's password."
            )
        elif code in AUTH_CODES:
            fix = (
                f"TikTok refused the access token of Airflow connection '{conn}': generate a new long-term "
                "access token (Audience Management scope) and put it in the connection's password."
            )
        else:
            fix = "Check the request and the advertiser's settings; retrying will not help."
        return TikTokApiError(f"{detail}. {fix}", code=code, api_message=api_message, request_id=request_id)
