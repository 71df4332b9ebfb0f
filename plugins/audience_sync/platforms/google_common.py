"""What both Google registrations share: the Google Ads customer id, consent statuses, membership limit."""

from __future__ import annotations

import re
from typing import Any

from audience_sync.core.campaign.base import Invalid

#: the longest Customer Match membership, in days (Ads API ``membership_life_span`` 0..540; Data Manager
#: ``membership_duration``)
MAX_MEMBERSHIP_DAYS = 540
#: consent statuses a campaign may write (Google's ``ad_user_data`` / ``ad_personalization``)
CONSENT_VALUES = ("GRANTED", "DENIED", "UNSPECIFIED")

_ACCOUNT_FIX = 'write the 10-digit Google Ads customer id, e.g. "123-456-7890" or "1234567890"'
_CUSTOMER = re.compile(r"\d{3}-?\d{3}-?\d{4}")


def normalise_customer_id(value: Any) -> str:
    """``"123-456-7890"``, ``"1234567890"`` or ``1234567890`` -> ``"1234567890"``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("must be a Google Ads customer id", _ACCOUNT_FIX)
    text = str(value).strip()
    if not text.isascii() or not _CUSTOMER.fullmatch(text):
        raise Invalid(f"'{text}' is not a Google Ads customer id: expected 10 digits", _ACCOUNT_FIX)
    return text.replace("-", "")
