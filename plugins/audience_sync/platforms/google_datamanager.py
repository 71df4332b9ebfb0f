"""Google Customer Match through the Data Manager API as the registry knows it: campaign model, account
format, options, rules and limits.

Registered by :mod:`audience_sync.platforms` (importing this module alone registers nothing). No SDK
import here: the destination is built by the factory the registration names, when a task runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from audience_sync.core.campaign.base import Invalid, StrictModel
from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import GOOGLE_DATAMANAGER as RULES
from audience_sync.core.platforms import Platform
from audience_sync.platforms.google_common import CONSENT_VALUES, MAX_MEMBERSHIP_DAYS, normalise_customer_id

NAME = "google_datamanager"


def _consent_value(value: Any) -> str:
    text = str(value).strip().upper() if isinstance(value, str) else ""
    if text not in CONSENT_VALUES:
        raise Invalid(
            f"{value!r} is not a consent status",
            f"write one of {', '.join(CONSENT_VALUES)} (EEA users need GRANTED for both)",
        )
    return text


def _membership_days(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MEMBERSHIP_DAYS:
        raise Invalid(
            f"{value!r} is not a membership duration in days",
            f"write a whole number of days from 1 to {MAX_MEMBERSHIP_DAYS} (Customer Match's maximum)",
        )
    return value


ConsentValue = Annotated[str, BeforeValidator(_consent_value)]
MembershipDays = Annotated[int, BeforeValidator(_membership_days)]
CustomerId = Annotated[str, BeforeValidator(normalise_customer_id)]


class Consent(StrictModel):
    """Request-level consent sent with every upload (Google's EU user consent policy)."""

    ad_user_data: ConsentValue = "UNSPECIFIED"
    ad_personalization: ConsentValue = "UNSPECIFIED"


class GoogleDataManagerCampaignDestination(DestinationBase):
    """A Google Ads account reached through the Data Manager API.

    ``operating_account_id`` is the account that owns the Customer Match list (normalised to 10 digits);
    ``login_account_id`` the manager account the connection signs in through, when not the operating one.
    """

    platform: Literal["google_datamanager"]
    operating_account_id: Account
    login_account_id: CustomerId | None = None
    membership_duration_days: MembershipDays = MAX_MEMBERSHIP_DAYS
    consent: Consent = Consent()


GOOGLE_DATAMANAGER = Platform(
    name=NAME,
    title="Google (Data Manager)",
    default_conn_id="google_datamanager_default",
    account_field="operating_account_id",
    normalise_account=normalise_customer_id,
    account_example="1234567890",
    rules=RULES,
    # IngestAudienceMembers / RemoveAudienceMembers: at most 10,000 members per request
    # (https://developers.google.com/data-manager/api/limits)
    max_batch_rows=10_000,
    max_remove_rows=10_000,
    # no minimum claimed: Google's serving thresholds differ by network and were not verified here
    campaign_model=GoogleDataManagerCampaignDestination,
    destination="audience_sync.hooks.google_datamanager:google_datamanager_destination",
)
