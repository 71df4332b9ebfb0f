"""Meta custom audiences as the registry knows them: campaign model, account format, rules, limits, warnings.

Registered by :mod:`audience_sync.platforms` (importing this module alone registers nothing).
"""

from __future__ import annotations

from typing import Any, Literal

from audience_sync.core.campaign.base import Invalid
from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import META as META_RULES
from audience_sync.core.platforms import GroupShape, Platform

_ACCOUNT_FIX = 'write the numeric ad account id, e.g. "act_1234567890" or "1234567890"'

#: words that may get an audience flagged by Meta as suggesting health or financial status (reference §1.2)
SENSITIVE_TERMS = (
    "health",
    "medical",
    "disease",
    "diabet",
    "cancer",
    "hiv",
    "aids",
    "pregnan",
    "fertility",
    "depress",
    "anxiety",
    "mental",
    "therapy",
    "pharma",
    "drug",
    "addict",
    "alcohol",
    "obes",
    "weight_loss",
    "disab",
    "income",
    "salary",
    "wealth",
    "rich",
    "debt",
    "loan",
    "credit",
    "bankrupt",
    "mortgage",
    "insolven",
    "poverty",
    "welfare",
    "benefit",
)


def normalise_ad_account_id(value: Any) -> str:
    """Return ``act_<digits>`` for ``1234``, ``"1234"`` or ``"act_1234"``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("must be an ad account id", _ACCOUNT_FIX)
    text = str(value).strip()
    digits = text[4:] if text.lower().startswith("act_") else text
    if not digits.isascii() or not digits.isdigit():
        raise Invalid(
            f"'{text}' is not a valid ad account id: expected digits, optionally after 'act_'", _ACCOUNT_FIX
        )
    return f"act_{digits}"


def sensitive_name_warnings(segment_name: str, group_size: int, shape: GroupShape) -> list[str]:
    """Warn when the segment name suggests health or financial status, which Meta may flag."""
    name = segment_name.lower()
    words = name.replace("-", "_").replace(" ", "_").split("_")
    # a term with "_" matches anywhere in the name; a single word matches the start of a word
    hits = [t for t in SENSITIVE_TERMS if (t in name if "_" in t else any(w.startswith(t) for w in words))]
    if not hits:
        return []
    return [
        f"segment name {segment_name!r} contains {', '.join(repr(h) for h in hits)}: Meta may flag audiences "
        "whose names suggest health conditions or financial status and then block uploads"
    ]


class MetaCampaignDestination(DestinationBase):
    """A Meta (Facebook/Instagram) ad account. ``ad_account_id`` is normalised to ``act_<digits>``."""

    platform: Literal["meta"]
    ad_account_id: Account


META = Platform(
    name="meta",
    title="Meta",
    default_conn_id="meta_default",
    account_field="ad_account_id",
    normalise_account=normalise_ad_account_id,
    account_example="act_1234567890",
    rules=META_RULES,
    max_batch_rows=10_000,
    # by default a DELETE puts the payload in the URL; python-sdk#717 breaks at 300 single-key rows
    # (~21 KB) and works at 250 (~18 KB). A connection that sends removals in the body (remove_via)
    # uses max_batch_rows instead.
    max_remove_rows=250,
    min_useful_size=100,  # Meta's help centre: avoid customer lists of fewer than 100 people
    warnings=sensitive_name_warnings,
    campaign_model=MetaCampaignDestination,
    destination="audience_sync.hooks.meta:meta_destination",
)
