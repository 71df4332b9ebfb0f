"""What a failed Google Ads API call means for a sync: retry with backoff, or stop and say what to fix.

Errors arrive three ways: a ``GoogleAdsException`` (the client's ExceptionInterceptor read the
GoogleAdsFailure trailer), a ``google.api_core`` exception (status INTERNAL and RESOURCE_EXHAUSTED are
never converted, reference §1, though a failure trailer may still ride on them) or a bare
``grpc.RpcError``. Each becomes a :class:`~audience_sync.core.errors.DestinationError` whose ``code`` is
the gRPC status number and ``subcode`` the error's enum value (None without a GoogleAdsFailure); the
message names the error (``database_error.CONCURRENT_MODIFICATION``), the request id and the fix.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.ads.googleads.errors import GoogleAdsException
from google.api_core import exceptions as api_exceptions

from audience_sync.core.errors import DestinationError, PermanentDestinationError, TransientDestinationError
from audience_sync.destinations.google_ads_api import error_name, failure_from_trailers
from audience_sync.destinations.grpc_common import TRANSIENT_STATUSES

#: errors a later attempt can get past (reference §3 "Retry policy")
TRANSIENT_ERRORS = frozenset(
    {
        ("quota_error", "RESOURCE_EXHAUSTED"),
        ("quota_error", "RESOURCE_TEMPORARILY_EXHAUSTED"),
        ("database_error", "CONCURRENT_MODIFICATION"),
        ("internal_error", "TRANSIENT_ERROR"),
        ("internal_error", "INTERNAL_ERROR"),
        ("internal_error", "DEADLINE_EXCEEDED"),
    }
)
_DATA_MANAGER = (
    "Customer Match through the Google Ads API is closed to developers Google has not allowlisted (since "
    "1 April 2026). Send this audience with `platform: google_datamanager` (the Data Manager API) "
    "instead of google_ads in the campaign's destinations."
)


def _fixes(account: str, conn: str) -> dict[tuple[str, str] | str, str]:
    """Fixes by (category, NAME), or by category for the whole category."""
    permission = (
        f"The Google account or service account of Airflow connection '{conn}' has no permission on "
        f"customer {account}: grant it access in Google Ads, or set login_customer_id in the connection to "
        "the manager account through which it has access."
    )
    terms = (
        f"Accept the Customer Match terms (customer data terms) in Google Ads for customer {account} "
        "(Tools > Shared library > Audience manager), and set the destination's consent "
        "(ad_user_data, ad_personalization) to GRANTED."
    )
    return {
        ("not_allowlisted_error", "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"): _DATA_MANAGER,
        ("authorization_error", "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION"): (
            "The Google Cloud project of the OAuth client has no production access to the Google Ads API. "
            + _DATA_MANAGER
        ),
        "authentication_error": (
            f"The OAuth credentials of Airflow connection '{conn}' were refused: renew the refresh token (or "
            "the service-account key) in its extras."
        ),
        "authorization_error": permission,
        ("authorization_error", "DEVELOPER_TOKEN_NOT_APPROVED"): (
            f"The developer token of connection '{conn}' has test access only: apply for Basic access, or "
            "remove developer_token from the connection (tokens are optional since September 2026)."
        ),
        ("authorization_error", "INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION"): (
            f"login_customer_id of connection '{conn}' is not a manager of customer {account}: set it to "
            "the manager account that links the customer, or remove it."
        ),
        ("offline_user_data_job_error", "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"): terms,
        ("user_list_error", "ADVERTISER_TOS_NOT_ACCEPTED"): terms,
        ("offline_user_data_job_error", "NOT_ON_ALLOWLIST_FOR_USER_ID"): (
            "CRM_ID lists need Google's allowlist: use upload_key_type CONTACT_INFO, or ask Google."
        ),
        ("user_list_error", "ADVERTISER_NOT_ON_ALLOWLIST_FOR_USING_UPLOADED_DATA"): _DATA_MANAGER,
    }


def parts(exc: BaseException) -> tuple[grpc.StatusCode | None, Any, str]:
    """The gRPC status, the GoogleAdsFailure (or None) and the request id of a failed call."""
    if isinstance(exc, GoogleAdsException):
        return exc.error.code(), exc.failure, str(exc.request_id or "")
    call: Any = exc
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        call = exc.response if isinstance(exc.response, grpc.Call) else None
        status = exc.grpc_status_code
    else:
        status = exc.code() if isinstance(exc, grpc.Call) else None
    trailers = call.trailing_metadata() if isinstance(call, grpc.Call) else None
    request_id = next((str(v) for k, v in trailers or () if k == "request-id"), "")
    return status, failure_from_trailers(trailers), request_id


def classify(exc: BaseException, what: str, *, account: str, conn_label: str) -> DestinationError:
    status, failure, request_id = parts(exc)
    code = int(status.value[0]) if status is not None else None
    errors = list(failure.errors) if failure is not None else []
    where = f"Google Ads {what} (customer {account})"
    tail = f"; request id {request_id}" if request_id else ""
    if not errors:
        name = status.name if status is not None else type(exc).__name__
        if status in TRANSIENT_STATUSES or status is None:
            return TransientDestinationError(
                f"{where} failed: {name}{tail}; will retry with backoff", code=code
            )
        return PermanentDestinationError(f"{where} failed: {name}{tail}. Retrying will not help.", code=code)
    category, name, value = error_name(errors[0])
    message = str(errors[0].message)
    detail = f"{where} failed: {category}.{name}: {message}{tail}"
    if (category, name) in TRANSIENT_ERRORS:
        return TransientDestinationError(f"{detail}; will retry with backoff", code=code, subcode=value)
    fixes = _fixes(account, conn_label)
    fix = (
        fixes.get((category, name))
        or fixes.get(category)
        or "Check the request and the account; retrying will not help."
    )
    return PermanentDestinationError(f"{detail}. {fix}", code=code, subcode=value)
