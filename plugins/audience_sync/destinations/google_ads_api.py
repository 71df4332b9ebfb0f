"""The Google Ads API version this package speaks, and every import that names it.

Google ships four major API versions a year and the client library drops old ones in its own majors
(reference §9), so the version lives in :data:`API_VERSION` and every ``google.ads.googleads.v26``
import is in this module: bumping the version is this file plus the ``google-ads`` pin. Elsewhere code
asks the client (``client.get_type`` / ``client.enums``) or imports the names below. The sandbox
imports its message classes, method paths and failure trailer from here too, so both sides of a test
always speak the same version.

Also here, because both sides must agree on them: the few GAQL queries the destination issues
(:func:`gaql`, the only place a query string is built) and the reading of a ``GoogleAdsFailure``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.ads.googleads.v26.common.types.consent import Consent
from google.ads.googleads.v26.common.types.offline_user_data import (
    CustomerMatchUserListMetadata,
    OfflineUserAddressInfo,
    UserData,
    UserIdentifier,
)
from google.ads.googleads.v26.common.types.user_lists import CrmBasedUserListInfo
from google.ads.googleads.v26.enums.types.consent_status import ConsentStatusEnum
from google.ads.googleads.v26.enums.types.customer_match_upload_key_type import (
    CustomerMatchUploadKeyTypeEnum,
)
from google.ads.googleads.v26.enums.types.offline_user_data_job_status import OfflineUserDataJobStatusEnum
from google.ads.googleads.v26.enums.types.offline_user_data_job_type import OfflineUserDataJobTypeEnum
from google.ads.googleads.v26.enums.types.user_list_access_status import UserListAccessStatusEnum
from google.ads.googleads.v26.enums.types.user_list_membership_status import UserListMembershipStatusEnum
from google.ads.googleads.v26.enums.types.user_list_type import UserListTypeEnum
from google.ads.googleads.v26.errors.types.errors import (
    ErrorCode,
    ErrorLocation,
    GoogleAdsError,
    GoogleAdsFailure,
)
from google.ads.googleads.v26.resources.types.offline_user_data_job import (
    OfflineUserDataJob,
    OfflineUserDataJobMetadata,
)
from google.ads.googleads.v26.resources.types.user_list import UserList
from google.ads.googleads.v26.services.types import google_ads_service as ads_service
from google.ads.googleads.v26.services.types import offline_user_data_job_service as job_service
from google.ads.googleads.v26.services.types import user_list_service

API_VERSION = "v26"
#: the package of the versioned service clients (``<package>.<snake_name>.client``)
SERVICES_PACKAGE = f"google.ads.googleads.{API_VERSION}.services.services"
#: trailing-metadata key of a serialised GoogleAdsFailure (the client's ExceptionInterceptor reads it)
FAILURE_TRAILER = f"google.ads.googleads.{API_VERSION}.errors.googleadsfailure-bin"
FAILURE_TYPE_URL = f"type.googleapis.com/google.ads.googleads.{API_VERSION}.errors.GoogleAdsFailure"
SERVICE_PREFIX = f"google.ads.googleads.{API_VERSION}.services"

if UserList.__module__.split(".")[3] != API_VERSION:  # pragma: no cover - a half-done version bump
    raise ImportError(f"google_ads_api imports {UserList.__module__}, but API_VERSION is {API_VERSION}")

__all__ = [
    "API_VERSION",
    "FAILURE_TRAILER",
    "Consent",
    "ConsentStatusEnum",
    "CrmBasedUserListInfo",
    "CustomerMatchUploadKeyTypeEnum",
    "CustomerMatchUserListMetadata",
    "ErrorCode",
    "ErrorLocation",
    "GoogleAdsError",
    "GoogleAdsFailure",
    "OfflineUserAddressInfo",
    "OfflineUserDataJob",
    "OfflineUserDataJobMetadata",
    "OfflineUserDataJobStatusEnum",
    "OfflineUserDataJobTypeEnum",
    "UserData",
    "UserIdentifier",
    "UserList",
    "UserListAccessStatusEnum",
    "UserListMembershipStatusEnum",
    "UserListTypeEnum",
    "ads_service",
    "job_service",
    "user_list_service",
]

# ----------------------------------------------------------------------------------- identifiers

#: UserIdentifier fields (one per identifier) and the OfflineUserAddressInfo fields that together form
#: one ``address_info`` identifier; the rules table's column names (core/normalize/platforms.py)
IDENTIFIER_FIELDS = ("hashed_email", "hashed_phone_number", "mobile_id", "third_party_user_id")
ADDRESS_FIELDS = ("hashed_first_name", "hashed_last_name", "country_code", "postal_code")
#: the fields Google wants as hex SHA-256 (reference §5): anything else there is INVALID_SHA256_FORMAT
HASHED_FIELDS = frozenset({"hashed_email", "hashed_phone_number", "hashed_first_name", "hashed_last_name"})
#: which identifiers a list of each upload key type takes ("mixed data types are not allowed")
KEY_TYPE_FIELDS: Mapping[str, frozenset[str]] = {
    "CONTACT_INFO": frozenset({"hashed_email", "hashed_phone_number", *ADDRESS_FIELDS}),
    "CRM_ID": frozenset({"third_party_user_id"}),
    "MOBILE_ADVERTISING_ID": frozenset({"mobile_id"}),
}
#: at most this many identifiers in one AddOfflineUserDataJobOperations request (the API's hard cap)
MAX_IDENTIFIERS_PER_REQUEST = 100_000
#: at most this many identifiers in one UserData
MAX_IDENTIFIERS_PER_USER = 20

# ----------------------------------------------------------------------------------------- GAQL

LIST_FIELDS = (
    "user_list.resource_name",
    "user_list.id",
    "user_list.name",
    "user_list.membership_status",
    "user_list.membership_life_span",
    "user_list.crm_based_user_list.upload_key_type",
    "user_list.size_for_search",
    "user_list.size_for_display",
    "user_list.match_rate_percentage",
)
JOB_FIELDS = (
    "offline_user_data_job.resource_name",
    "offline_user_data_job.id",
    "offline_user_data_job.external_id",
    "offline_user_data_job.status",
    "offline_user_data_job.failure_reason",
    "offline_user_data_job.customer_match_user_list_metadata.user_list",
    "offline_user_data_job.operation_metadata.match_rate_range",
)
_ENUM_VALUE = re.compile(r"[A-Z][A-Z0-9_]*")
RESOURCE_NAME = re.compile(r"customers/\d{1,20}/(?:userLists|offlineUserDataJobs)/\d{1,20}")


def gaql(resource: str, fields: Sequence[str], where: Mapping[str, int | str]) -> str:
    """The one GAQL builder: ``SELECT fields FROM resource WHERE a = v AND ...``.

    Values are integers, enum names or resource names, each checked, so that no free text (a list
    name above all) can reach a query string; a list is found by name in Python instead.
    """
    conditions = []
    for field, value in where.items():
        if isinstance(value, bool):
            raise ValueError(f"GAQL value for {field} must be an int, enum name or resource name")
        if isinstance(value, int):
            shown = str(value)
        elif _ENUM_VALUE.fullmatch(value):
            shown = value
        elif RESOURCE_NAME.fullmatch(value):
            shown = f"'{value}'"
        else:
            raise ValueError(f"GAQL value for {field} must be an int, enum name or resource name")
        conditions.append(f"{field} = {shown}")
    query = f"SELECT {', '.join(fields)} FROM {resource}"
    return f"{query} WHERE {' AND '.join(conditions)}" if conditions else query


def owned_lists_query(list_id: int | None = None) -> str:
    """The account's own CRM-based lists (one of them with ``list_id``)."""
    where: dict[str, int | str] = {"user_list.type": "CRM_BASED", "user_list.access_reason": "OWNED"}
    if list_id is not None:
        where["user_list.id"] = int(list_id)
    return gaql("user_list", LIST_FIELDS, where)


def job_query(*, resource_name: str | None = None, external_id: int | None = None) -> str:
    """One offline user data job, by resource name or by the external id we gave it."""
    if resource_name is not None:
        return gaql(
            "offline_user_data_job", JOB_FIELDS, {"offline_user_data_job.resource_name": resource_name}
        )
    if external_id is None:
        raise ValueError("job_query needs a resource_name or an external_id")
    return gaql("offline_user_data_job", JOB_FIELDS, {"offline_user_data_job.external_id": int(external_id)})


# ------------------------------------------------------------------------------------- failures


def error_name(error: GoogleAdsError | Any) -> tuple[str, str, int]:
    """``(category, NAME, value)`` of an error's code (``database_error``, ``CONCURRENT_MODIFICATION``, 2)."""
    code = error.error_code
    pb = type(code).pb(code) if hasattr(type(code), "pb") else code
    category = pb.WhichOneof("error_code") or "unknown"
    value = int(getattr(pb, category, 0)) if category != "unknown" else 0
    enum_field = pb.DESCRIPTOR.fields_by_name.get(category)
    name = str(value)
    if enum_field is not None and enum_field.enum_type is not None:
        found = enum_field.enum_type.values_by_number.get(value)
        name = found.name if found is not None else name
    return category, name, value


def failure_from_trailers(trailers: Iterable[tuple[str, Any]] | None) -> GoogleAdsFailure | None:
    """The GoogleAdsFailure a call's trailing metadata carries, if any."""
    for key, value in trailers or ():
        if key == FAILURE_TRAILER:
            try:
                return GoogleAdsFailure.deserialize(value)
            except Exception:  # a garbled trailer is no failure detail to act on
                return None
    return None


def failure_details(status: Any) -> list[GoogleAdsFailure]:
    """The GoogleAdsFailures in a partial-failure ``google.rpc.Status`` (empty when there is none)."""
    if status is None or not getattr(status, "code", 0):
        return []
    return [GoogleAdsFailure.deserialize(d.value) for d in status.details if d.type_url == FAILURE_TYPE_URL]


def operation_index(error: GoogleAdsError | Any) -> int | None:
    """The index of the operation an error is about (``operations[i]`` in its field path), if any."""
    for element in error.location.field_path_elements:
        if element.field_name == "operations":
            return int(element.index) if "index" in element else None
    return None
