"""The file hand-off as the registry knows it: campaign model (recipient, file layout, compression), rules, limits.

Registered by :mod:`audience_sync.platforms` (importing this module alone registers nothing). The files
are written by :mod:`audience_sync.destinations.file_drop` when a task runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from audience_sync.core.campaign.base import Invalid
from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import FILE_DROP as RULES
from audience_sync.core.platforms import Platform

NAME = "file_drop"
#: what a run writes per segment: the whole membership, or this run's adds and removes
FILE_LAYOUTS = ("membership", "changes")
COMPRESSIONS = ("gzip", "none")

_RECIPIENT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_RECIPIENT_FIX = 'write the recipient as a folder name of lowercase letters, digits, "_", "-" or ".", e.g. "acme_onboarding"'


def normalise_recipient(value: Any) -> str:
    """The recipient's folder name under the connection's base URL; raise when it is not a safe one."""
    text = value.strip() if isinstance(value, str) else ""
    if not _RECIPIENT.fullmatch(text) or ".." in text:
        raise Invalid(f"{value!r} is not a recipient folder name", _RECIPIENT_FIX)
    return text


def _choice(options: tuple[str, ...], what: str) -> Any:
    def check(value: Any) -> str:
        if value not in options:
            raise Invalid(f"{value!r} is not a {what}", f"write one of {', '.join(options)}")
        return str(value)

    return check


FileLayout = Annotated[
    Literal["membership", "changes"], BeforeValidator(_choice(FILE_LAYOUTS, "file layout"))
]
Compression = Annotated[Literal["gzip", "none"], BeforeValidator(_choice(COMPRESSIONS, "compression"))]


class FileDropCampaignDestination(DestinationBase):
    """Hashed-identifier files for a third party (an onboarding or clean-room service).

    ``recipient`` names the folder under the connection's base URL the files go to; ``files`` is what a
    run writes: ``membership`` (the segment's whole membership after the run) or ``changes`` (this run's
    adds and removes as separate files); ``compression`` is ``gzip`` (``.csv.gz``) or ``none`` (``.csv``).
    """

    platform: Literal["file_drop"]
    recipient: Account
    files: FileLayout = "membership"
    compression: Compression = "gzip"


FILE_DROP = Platform(
    name=NAME,
    title="File drop",
    default_conn_id="file_drop_default",
    account_field="recipient",
    normalise_account=normalise_recipient,
    account_example="acme_onboarding",
    rules=RULES,
    # one batch is one staged part file: the same size as the ad platforms' requests keeps memory alike
    max_batch_rows=10_000,
    max_remove_rows=10_000,
    campaign_model=FileDropCampaignDestination,
    destination="audience_sync.hooks.file_drop:file_drop_destination",
)
