"""Google Ads Customer Match (Google Ads API) as the registry knows it: campaign model, account format,
rules, limits.

Registered by :mod:`audience_sync.platforms` (importing this module alone registers nothing). New
advertisers cannot use this path since April 2026 (reference §0): ``google_datamanager`` is the default
Google destination, this one serves accounts Google already allowlisted.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from audience_sync.core.campaign.base import Invalid, NonEmptyStr, StrictModel
from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import GOOGLE_ADS as GOOGLE_ADS_RULES
from audience_sync.core.platforms import GroupShape, Platform
from audience_sync.platforms.google_common import MAX_MEMBERSHIP_DAYS, normalise_customer_id

ConsentValue = Literal["GRANTED", "UNSPECIFIED"]


class GoogleAdsConsent(StrictModel):
    """Consent sent on every add job. DENIED is refused: Google rejects such a job
    (CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS); rows without consent are left out by the group's
    consent column instead. The default is UNSPECIFIED, as for ``google_datamanager``: granting consent is
    the advertiser's statement to make, so a campaign says GRANTED itself (EEA users need it for both)."""

    ad_user_data: ConsentValue = "UNSPECIFIED"
    ad_personalization: ConsentValue = "UNSPECIFIED"

    @field_validator("ad_user_data", "ad_personalization", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() == "DENIED":
            raise Invalid(
                "DENIED cannot be uploaded: Google refuses add jobs without consent",
                "set GRANTED (the campaign's consent column leaves out rows without consent) or UNSPECIFIED",
            )
        return value.strip().upper() if isinstance(value, str) else value


def allowlist_warning(segment_name: str, group_size: int, shape: GroupShape) -> list[str]:
    """The dry-run plan says once per destination that this path needs Google's allowlist."""
    return [
        "Customer Match through the Google Ads API works only for developers Google allowlisted (closed to "
        "new ones since April 2026); without that, uploads fail with CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE: "
        "use platform google_datamanager instead"
    ]


class GoogleAdsCampaignDestination(DestinationBase):
    """A Google Ads customer. ``customer_id`` is normalised to 10 digits without dashes.

    Options (passed to the destination factory): ``upload_key_type`` (CONTACT_INFO, CRM_ID or
    MOBILE_ADVERTISING_ID, with ``app_id``), ``membership_life_span_days`` (0..540), ``consent`` and
    ``login_customer_id`` (a manager account, overriding the connection's).
    """

    platform: Literal["google_ads"]
    customer_id: Account
    upload_key_type: Literal["CONTACT_INFO", "CRM_ID", "MOBILE_ADVERTISING_ID"] = "CONTACT_INFO"
    app_id: NonEmptyStr | None = None
    membership_life_span_days: int = Field(default=MAX_MEMBERSHIP_DAYS, ge=0, le=MAX_MEMBERSHIP_DAYS)
    consent: GoogleAdsConsent = Field(default_factory=GoogleAdsConsent)
    login_customer_id: str | None = None

    @field_validator("login_customer_id", mode="before")
    @classmethod
    def _login(cls, value: Any) -> Any:
        return None if value is None else normalise_customer_id(value)

    @model_validator(mode="after")
    def _app_id_with_mobile_ids(self) -> GoogleAdsCampaignDestination:
        if self.upload_key_type == "MOBILE_ADVERTISING_ID" and not self.app_id:
            raise Invalid(
                "upload_key_type MOBILE_ADVERTISING_ID needs app_id",
                'add app_id: the app\'s id, e.g. "com.example.app" or the iOS App Store id',
                at=("app_id",),
            )
        if self.upload_key_type != "MOBILE_ADVERTISING_ID" and self.app_id:
            raise Invalid(
                "app_id is only for upload_key_type MOBILE_ADVERTISING_ID",
                "remove app_id, or set upload_key_type: MOBILE_ADVERTISING_ID",
                at=("app_id",),
            )
        return self


GOOGLE_ADS = Platform(
    name="google_ads",
    title="Google Ads",
    default_conn_id="google_ads_default",
    account_field="customer_id",
    normalise_account=normalise_customer_id,
    account_example="123-456-7890",
    rules=GOOGLE_ADS_RULES,
    # a batch is sent in requests of at most 10,000 identifiers (google_ads.py), so its row count is
    # bounded only by what one task should hold between answers
    max_batch_rows=10_000,
    max_remove_rows=10_000,
    # Google's help centre: Search, Gmail and YouTube serve a Customer Match list from 1,000 active
    # matched members (Display from 100); not checked against a live account
    min_useful_size=1000,
    warnings=allowlist_warning,
    campaign_model=GoogleAdsCampaignDestination,
    destination="audience_sync.hooks.google_ads:google_ads_destination",
)
