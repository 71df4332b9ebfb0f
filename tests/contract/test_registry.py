"""The contract suite covers the platform registry: every registered platform has a harness whose facts
agree with its registration."""

from __future__ import annotations

from audience_sync.core.platforms import get_platform
from tests.contract.conftest import HARNESSES, Harness


def test_every_registered_platform_has_a_harness(registered_platform: str) -> None:
    assert registered_platform in HARNESSES, (
        f"platform {registered_platform!r} is registered but the contract suite has no harness for it: "
        "subclass Harness in tests/contract/conftest.py and add it to HARNESSES"
    )


def test_the_harness_and_the_destination_agree_with_the_registration(harness: Harness) -> None:
    spec = get_platform(harness.platform)
    dest = harness.destination
    assert dest.platform == spec.name
    assert harness.max_batch_rows == dest.max_batch_rows == spec.max_batch_rows
    assert dest.max_remove_rows == spec.max_remove_rows
