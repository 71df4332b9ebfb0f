"""Destination models of a campaign: the shared base, and the per-platform models read from the registry.

Each platform's own model (``platform: Literal["<name>"]`` plus its account field) is part of its
registration in :mod:`audience_sync.core.platforms`; nothing here names a platform.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from audience_sync.core.campaign.base import Invalid, NonEmptyStr, Problem, StrictModel
from audience_sync.core.platforms import Platform, get_platform, platforms


def destination_problems(keys: list[tuple[Any, Any] | None]) -> list[Problem]:
    """The same (platform, account) must not appear twice."""
    problems: list[Problem] = []
    seen: dict[tuple[Any, Any], int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(
                (
                    ("destinations", i),
                    f"duplicates destinations[{seen[key]}] (same platform and account)",
                    "remove the duplicate destination",
                )
            )
        else:
            seen[key] = i
    return problems


def normalised_account(spec: Platform, value: Any) -> str:
    """``spec.normalise_account(value)``, with a plain ValueError turned into one carrying a fix."""
    try:
        return spec.normalise_account(value)
    except Invalid:
        raise
    except ValueError as exc:
        raise Invalid(
            str(exc), f'write the {spec.title} account as {spec.account_field}: "{spec.account_example}"'
        ) from None


def _normalise_account_field(value: Any, info: ValidationInfo) -> Any:
    """Normalise an account field with its platform's rule (``platform`` is validated before it)."""
    name = info.data.get("platform")
    if not isinstance(name, str):  # the platform failed already; that error is the one to report
        return value
    return normalised_account(get_platform(name), value)


#: The type of a platform's account field: normalised with the platform's ``normalise_account``.
Account = Annotated[str, BeforeValidator(_normalise_account_field)]


class DestinationBase(StrictModel):
    """What every destination of a campaign has. A platform's model fixes ``platform`` to a ``Literal``
    and declares its account field (named by its registration's ``account_field``) as :data:`Account`,
    so it is normalised with the platform's own rule.

    Code outside the platform's modules reads :attr:`platform`, :attr:`account` and :attr:`conn_id`.
    """

    platform: str
    conn_id: NonEmptyStr | None = Field(default=None, validate_default=True)

    @classmethod
    def spec(cls) -> Platform:
        """The registration of this model's platform."""
        (name,) = get_args(cls.model_fields["platform"].annotation)
        return get_platform(name)

    @field_validator("conn_id")
    @classmethod
    def _default_conn_id(cls, value: str | None) -> str | None:
        """Default to the platform's connection (``meta_default``)."""
        if value is None and cls is not DestinationBase:
            return cls.spec().default_conn_id
        return value

    @property
    def account(self) -> str:
        """The account, normalised by the platform's rule (Meta: ``act_<digits>``)."""
        spec = self.spec()
        # normalising is idempotent; doing it here too keeps a model that forgot ``Account`` correct
        return spec.normalise_account(getattr(self, spec.account_field))

    def options(self) -> dict[str, Any]:
        """The platform's own settings of this destination (every field but ``platform``, ``conn_id``
        and the account), JSON-ready: what the platform's destination factory gets as keyword arguments."""
        skip = {"platform", "conn_id", self.spec().account_field}
        return self.model_dump(mode="json", exclude=skip)

    def identity(self) -> tuple[str, str]:
        """Identity used to detect duplicate destinations: the platform and its normalised account."""
        return (self.platform, self.account)


def destination_models() -> dict[str, type[DestinationBase]]:
    """Platform name -> the model of one of its destinations in a campaign file, from the registry."""
    return {name: spec.campaign_model for name, spec in platforms().items()}


def supported_platforms() -> tuple[str, ...]:
    """The platform names a campaign file may use (the registered ones)."""
    return tuple(platforms())
