"""The platform registry: what a registration must hold, lookups, and Meta's registration."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from typing import Literal

import pytest

from audience_sync.core.campaign.destinations import Account, DestinationBase
from audience_sync.core.normalize.platforms import META as META_RULES
from audience_sync.core.platforms import (
    UnknownPlatformError,
    get_platform,
    is_builtin,
    platform_names,
    platforms,
    register,
    unregister,
)
from audience_sync.platforms import BUILTINS
from audience_sync.platforms.meta import META, MetaCampaignDestination, normalise_ad_account_id
from tests.fixtures.metaclone import registered

BUILTIN_NAMES = tuple(p.name for p in BUILTINS)


class ZedDestination(DestinationBase):
    platform: Literal["zed"]
    zed_id: Account


def zed(**changes: object) -> object:
    base = dataclasses.replace(
        META,
        name="zed",
        title="Zed",
        default_conn_id="zed_default",
        account_field="zed_id",
        normalise_account=str,
        account_example="z1",
        campaign_model=ZedDestination,
        destination="tests.nowhere:factory",
        warnings=lambda name, size, shape: [],
    )
    return dataclasses.replace(base, **changes)


def test_meta_is_registered_with_its_facts() -> None:
    assert platform_names()[0] == "meta"
    spec = get_platform("meta")
    assert spec is META
    assert (spec.default_conn_id, spec.account_field, spec.rules) == (
        "meta_default",
        "ad_account_id",
        META_RULES,
    )
    assert (spec.max_batch_rows, spec.max_remove_rows, spec.min_useful_size) == (10_000, 250, 100)
    assert spec.campaign_model is MetaCampaignDestination
    assert spec.normalise_account(" 123 ") == normalise_ad_account_id("act_123") == "act_123"


def test_meta_plan_warnings() -> None:
    assert META.plan_warnings("loyal_customers", 100) == []
    small, flagged = META.plan_warnings("diabetes_loan_leads", 99)
    assert "below Meta's useful minimum (~100" in small
    assert "'diabet', 'loan'" in flagged and "Meta may flag" in flagged
    assert META.plan_warnings("richmond_users", 500) != []  # word starts match: 'rich'
    assert META.plan_warnings("enrich_users", 500) == []  # ... inside a word does not


def test_unknown_platform_proposes_a_name_and_lists_the_supported() -> None:
    with pytest.raises(UnknownPlatformError, match="did you mean 'meta'"):
        get_platform("Meta")
    with pytest.raises(
        ValueError, match=r"unknown platform 'mata'; did you mean 'meta'\? supported platforms: meta"
    ):
        get_platform("mata")


def test_register_and_unregister() -> None:
    spec = zed()
    try:
        register(spec)  # type: ignore[arg-type]
        register(spec)  # type: ignore[arg-type]  # the same spec again: harmless
        assert platform_names() == (*BUILTIN_NAMES, "zed")  # built-ins first, in their order
        with pytest.raises(ValueError, match="already registered"):
            register(zed(title="Other"))  # type: ignore[arg-type]
        register(zed(title="Other"), replace=True)  # type: ignore[arg-type]
        assert get_platform("zed").title == "Other"
    finally:
        unregister("zed")
    assert "zed" not in platforms()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Zed"}, "lowercase letters"),
        ({"destination": "tests.nowhere.factory"}, "must be 'package.module:factory'"),
        ({"max_batch_rows": 0}, "batch limits must be positive"),
        ({"campaign_model": MetaCampaignDestination}, 'must declare platform: Literal["zed"]'),
        ({"account_field": "account_id"}, "has no field 'account_id'"),
    ],
)
def test_a_registration_is_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        zed(**changes)


def test_the_account_example_must_be_valid() -> None:
    with pytest.raises(ValueError, match="not a valid ad account id"):
        zed(normalise_account=normalise_ad_account_id)


def test_built_ins_are_known_as_such_however_they_were_first_imported() -> None:
    """Extraction workers (fresh processes) only know the built-ins: a platform counts as one only when
    it is exactly what the built-ins package registers, whichever module was imported first."""
    code = (
        "import audience_sync.platforms.meta\n"  # the package imported through one of its modules
        "from audience_sync.core.platforms import is_builtin\n"
        "print(is_builtin('meta'), is_builtin('nowhere'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
    with registered():
        assert not is_builtin("metaclone")
    assert is_builtin("meta")
