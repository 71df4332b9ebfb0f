"""Destination models of a campaign (one per ad platform) and their validation rules.

Adding a platform: define a ``<Platform>Destination(DestinationBase)`` model with
``platform: Literal["<platform>"]``, add it to the :data:`Destination` union and to
:data:`DESTINATION_MODELS`. Everything else (error messages, :data:`SUPPORTED_PLATFORMS`) follows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator

from audience_sync.core.campaign.base import Invalid, NonEmptyStr, Problem, StrictModel


def destination_problems(keys: list[tuple[Any, Any] | None]) -> list[Problem]:
    """The same (platform, ad account) must not appear twice."""
    problems: list[Problem] = []
    seen: dict[tuple[Any, Any], int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(
                (
                    ("destinations", i),
                    f"duplicates destinations[{seen[key]}] (same platform and ad account)",
                    "remove the duplicate destination",
                )
            )
        else:
            seen[key] = i
    return problems


def normalise_ad_account_id(value: Any) -> str:
    """Return ``act_<digits>`` for ``1234``, ``"1234"`` or ``"act_1234"``; raise otherwise."""
    fix = 'write the numeric ad account id, e.g. "act_1234567890" or "1234567890"'
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("must be an ad account id", fix)
    text = str(value).strip()
    digits = text[4:] if text.lower().startswith("act_") else text
    if not digits.isascii() or not digits.isdigit():
        raise Invalid(f"'{text}' is not a valid ad account id: expected digits, optionally after 'act_'", fix)
    return f"act_{digits}"


class DestinationBase(StrictModel):
    """Fields every destination shares. Subclasses fix ``platform`` to a ``Literal``."""

    platform: str

    def identity(self) -> tuple[str, str]:
        """Identity used to detect duplicate destinations."""
        return (self.platform, self.model_dump_json())


class MetaDestination(DestinationBase):
    """A Meta (Facebook/Instagram) ad account. ``ad_account_id`` is normalised to ``act_<digits>``."""

    platform: Literal["meta"]
    ad_account_id: str
    conn_id: NonEmptyStr = "meta_default"

    @field_validator("ad_account_id", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> str:
        """Accept ``1234``, ``"1234"`` and ``"act_1234"``."""
        return normalise_ad_account_id(value)

    def identity(self) -> tuple[str, str]:
        """Identity used to detect duplicate destinations."""
        return (self.platform, self.ad_account_id)


#: Discriminated union on ``platform``. Add new platform models here and in DESTINATION_MODELS.
Destination = Annotated[Union[MetaDestination], Field(discriminator="platform")]  # noqa: UP007
DESTINATION_MODELS: dict[str, type[DestinationBase]] = {"meta": MetaDestination}
SUPPORTED_PLATFORMS: tuple[str, ...] = tuple(DESTINATION_MODELS)
