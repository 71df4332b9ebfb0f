"""Building the ``google-ads`` client from credential objects, for Google or for a loopback endpoint.

``GoogleAdsClient.load_from_*`` refresh the OAuth token over the network the moment they run
(reference §1), so the client is built from a ``google.auth`` credentials object instead: the token is
fetched on the first call, by the library's own auth plugin.

The library always opens a TLS channel to its endpoint (§1). For the local sandbox on a loopback
address, :class:`LoopbackGoogleAdsClient` builds each service client itself (reference §8, variant A):
a loopback channel with gRPC *local* credentials, which carry the same OAuth call credentials as the
TLS channel would (so the sandbox sees ``authorization``), wrapped in the library's own metadata,
logging and exception interceptors. Nothing is patched; every other endpoint takes the normal path.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

import grpc
from google.ads.googleads import util
from google.ads.googleads.client import GoogleAdsClient
from google.ads.googleads.interceptors import ExceptionInterceptor, LoggingInterceptor, MetadataInterceptor
from google.api_core.gapic_v1.client_info import ClientInfo
from google.auth.credentials import Credentials

from audience_sync.destinations.google_ads_api import API_VERSION, SERVICES_PACKAGE
from audience_sync.destinations.grpc_common import is_loopback, loopback_channel

#: the logger of google-ads' LoggingInterceptor
LIBRARY_LOGGER = "google.ads.googleads.client"


def make_client(
    credentials: Credentials,
    *,
    endpoint: str | None = None,
    login_customer_id: str | None = None,
    developer_token: str | None = None,
) -> GoogleAdsClient:
    """A proto-plus client of :data:`API_VERSION`; a loopback ``endpoint`` gets the loopback client."""
    # the library logs whole requests and faults (identifiers included, and mobile ids are not hashed) at
    # DEBUG and INFO, the summary line at WARNING: keep its logger at WARNING unless someone chose a level
    library_log = logging.getLogger(LIBRARY_LOGGER)
    if library_log.level == logging.NOTSET:
        library_log.setLevel(logging.WARNING)
    cls = LoopbackGoogleAdsClient if is_loopback(endpoint) else GoogleAdsClient
    return cls(
        credentials=credentials,
        developer_token=developer_token or None,
        endpoint=endpoint or None,
        login_customer_id=login_customer_id or None,
        version=API_VERSION,
        use_proto_plus=True,
    )


class LoopbackGoogleAdsClient(GoogleAdsClient):
    """A ``GoogleAdsClient`` whose services talk to a loopback endpoint without TLS (the sandbox)."""

    _channel: grpc.Channel | None = None

    def get_service(
        self,
        name: str,
        version: str = API_VERSION,
        interceptors: list[Any] | None = None,
        is_async: bool = False,
    ) -> Any:
        if is_async:
            raise NotImplementedError("the loopback client serves synchronous services only")
        module = import_module(f"{SERVICES_PACKAGE}.{util.convert_upper_case_to_snake_case(name)}")
        client_class = getattr(module, f"{name}Client")
        channel = grpc.intercept_channel(
            self._loopback_channel(),
            *(interceptors or []),
            MetadataInterceptor(self.developer_token, self.login_customer_id, self.linked_customer_id),
            LoggingInterceptor(logging.getLogger(LIBRARY_LOGGER), API_VERSION, self.endpoint),
            ExceptionInterceptor(API_VERSION, use_proto_plus=self.use_proto_plus),
        )
        transport = client_class.get_transport_class("grpc")(channel=channel, client_info=ClientInfo())
        return client_class(transport=transport)

    def _loopback_channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = loopback_channel(str(self.endpoint), self.credentials)
        return self._channel
