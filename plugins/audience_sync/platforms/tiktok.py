"""TikTok custom audiences (customer files) as the registry knows them: campaign model, advertiser id,
rules, limits and the 1,000-member warning (per identifier type's audience).

Registered by :mod:`audience_sync.platforms` (importing this module alone registers nothing). No client
import here: the destination is built by the factory the registration names, when a task runs.
"""

from __future__ import annotations

from typing import Any, Literal

from audience_sync.core.campaign.base import Invalid
from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import TIKTOK as RULES
from audience_sync.core.platforms import GroupShape, Platform

NAME = "tiktok"
#: TikTok refuses an APPEND, REMOVE or REPLACE that leaves an audience with fewer members (reference §2.3)
MIN_AUDIENCE_SIZE = 1_000
_ACCOUNT_FIX = 'write the numeric TikTok advertiser id, e.g. "7012345678901234567"'


def normalise_advertiser_id(value: Any) -> str:
    """The advertiser id as its digits; raise :class:`Invalid` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("must be a TikTok advertiser id", _ACCOUNT_FIX)
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():
        raise Invalid(f"'{text}' is not a valid advertiser id: expected digits only", _ACCOUNT_FIX)
    return text


#: the family's audiences, by the payload key (``calculate_type``) each holds, as the warnings name them
AUDIENCE_TITLES = {"EMAIL_SHA256": "e-mail", "PHONE_SHA256": "phone", "MAID_SHA256": "MAID"}


def too_small_warnings(segment_name: str, group_size: int, shape: GroupShape) -> list[str]:
    """Warn before TikTok refuses an update: each identifier type's audience must keep 1,000 members.

    With the group's counts per identifier (``shape.identifiers``, which the plan counts for TikTok), one
    warning per audience that would end under 1,000: a type with values in the group, and in a replace
    every type (a replace empties the audience of a type the group has none of). In ``add_only`` mode the
    audience keeps the members it has, which the plan does not read from TikTok: the warning says the
    append *may* be refused. Without counts, on the group's size.
    """
    if not shape.identifiers:
        if group_size >= MIN_AUDIENCE_SIZE:
            return []
        return [
            f"segment too small: TikTok refuses any update that leaves an audience under {MIN_AUDIENCE_SIZE:,} "
            f"members, and this group has {group_size}; the TikTok sync will be refused and reported as "
            "'segment_too_small' (each identifier type's audience needs 1,000 members of its own)"
        ]
    found = []
    for key, title in AUDIENCE_TITLES.items():
        n = int(shape.identifiers.get(key, 0))
        if n >= MIN_AUDIENCE_SIZE or (n == 0 and shape.mode != "replace"):
            continue  # big enough, or a type the run does not touch
        what = f"{n:,} member(s) of the group have a {title} identifier"
        if shape.mode == "add_only":
            fate = (
                f"the append may be refused: the {title} audience will hold them and the members it already "
                f"has (not read by the plan), and TikTok refuses it if that is under {MIN_AUDIENCE_SIZE:,}"
            )
        else:
            fate = (
                f"TikTok refuses an update that leaves an audience under {MIN_AUDIENCE_SIZE:,} members, so the "
                f"{title} audience's update will be refused and reported as 'segment_too_small'"
            )
        found.append(
            f"segment too small for TikTok's {title} audience ({key}) of {segment_name!r}: {what}; {fate} "
            "(the other identifier types' audiences are updated)"
        )
    return found


class TikTokCampaignDestination(DestinationBase):
    """A TikTok ads advertiser. ``advertiser_id`` is kept as its digits."""

    platform: Literal["tiktok"]
    advertiser_id: Account


TIKTOK = Platform(
    name=NAME,
    title="TikTok",
    default_conn_id="tiktok_default",
    account_field="advertiser_id",
    normalise_account=normalise_advertiser_id,
    account_example="7012345678901234567",
    rules=RULES,
    # one customer file per batch and identifier type: 50,000 hashes are ~3.3 MB, far below the API's
    # 50 MB a file (reference §2.3), and 50 files per update hold 2.5 million members
    max_batch_rows=50_000,
    max_remove_rows=50_000,
    # no generic "useful minimum" hint: below 1,000 TikTok refuses the update outright, which
    # too_small_warnings says (1,000 is also the size an ad group needs to target an audience)
    warnings=too_small_warnings,
    count_identifiers=True,  # the 1,000 rule holds per identifier type's audience
    campaign_model=TikTokCampaignDestination,
    destination="audience_sync.hooks.tiktok:tiktok_destination",
)
