"""Local loopback emulation of the ad-platform APIs (Meta Graph and TikTok over HTTP, Google Data Manager and the
Google Ads API over gRPC), for tests and the demo.

>>> from audience_sync.sandbox import start_sandbox
>>> with start_sandbox() as srv:          # doctest: +SKIP
...     srv.url, srv.meta.audiences()
"""

from __future__ import annotations

from audience_sync.sandbox.meta import MetaSandbox
from audience_sync.sandbox.server import SandboxServer, serve_forever, start_sandbox

__all__ = ["MetaSandbox", "SandboxServer", "serve_forever", "start_sandbox"]
