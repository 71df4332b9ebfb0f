"""TikTok's 1,000-member rule per identifier type, through extraction, the plan and the sync (no Airflow), on
SQLite and PostgreSQL, at TikTok's real minimum in the sandbox.

The group: 1,200 customers with an e-mail, 400 of them with a phone too, and 200 more with a phone only (600
phones). The plan counts the members per identifier type and warns for the phone audience only, also on a
rerun whose rows are reused from the ledger by fingerprint; the sync updates the e-mail audience (exact
membership read back from the sandbox), TikTok refuses the phone audience's update, and the counts say who
reached TikTok: the 1,200 with an e-mail are sent (the 400 with a phone too reached it through the e-mail
audience), the 200 with a phone only failed as ``segment_too_small``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import ExtractCounts, extract_and_stage
from audience_sync.core.fingerprints import known_in_background
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.normalize import RowHasher
from audience_sync.core.sync import RetryPolicy, SyncOutcome, SyncRequest, plan_sync, sync_audience
from audience_sync.destinations.tiktok import SEGMENT_TOO_SMALL, TikTokDestination, family_parts
from audience_sync.destinations.tiktok_client import TikTokClient
from audience_sync.outcome import metrics_row
from tests.conftest import SANDBOX_TOKEN

IDENTIFIERS = {"email": "email", "phone": "phone"}
HASHER = RowHasher("tiktok", IDENTIFIERS)
SCHEMA = tuple(HASHER.schema)
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
EMAILS = range(1_200)  # customers with an e-mail
PHONES = [*range(400), *range(1_200, 1_400)]  # with a phone: 400 of those, and 200 with a phone only
_accounts = itertools.count(7_300_000_000_000_000_000 + secrets.randbelow(10**12) * 10)
_runs = itertools.count(1)


def customer(i: int) -> dict[str, str]:
    return {
        "customer_id": f"cust-{i:05d}",
        "email": f" Member.{i}@Example.org" if i in EMAILS else "",
        "phone": f"+44 20 7946 {i:04d}" if i in PHONES else "",
    }


def sent(customers: list[dict[str, str]]) -> dict[str, set[str]]:
    """Per calculate type, the hashes TikTok's audience of that type should hold for these customers."""
    out: dict[str, set[str]] = {"EMAIL_SHA256": set(), "PHONE_SHA256": set(), "MAID_SHA256": set()}
    for c in customers:
        for key, value in zip(SCHEMA, HASHER.hash_row(c).values, strict=True):
            if value:
                out[key].add(value)
    return out


class World:
    def __init__(self, srv, url: str, tmp: Path) -> None:
        self.srv, self.tmp = srv, tmp
        self.app = srv.app("tiktok")
        assert self.app.min_audience_size == 1_000  # TikTok's rule, not a lowered minimum
        self.account = str(next(_accounts))
        self.keys = StateKeys.generate()
        self.store = StateStore(url, keys=self.keys)

    def dest(self) -> TikTokDestination:
        client = TikTokClient(SANDBOX_TOKEN, base_url=f"{self.srv.url}/open_api/v1.3", account=self.account)
        return TikTokDestination(client, self.account)

    def extract(self, customers: list[dict[str, str]]) -> ExtractCounts:
        # as the extract task: the fingerprints of the audience's unchanged rows, read meanwhile
        known = known_in_background(self.store, [("tiktok", self.account, "per_type_users")])
        return extract_and_stage(
            [customers[i : i + 500] for i in range(0, len(customers), 500)],
            key="customer_id",
            identifiers=IDENTIFIERS,
            platforms=["tiktok"],
            staging_dir=self.tmp / f"run{next(_runs)}",
            keys=self.keys,
            known=known,
            workers=1,
        )

    def req(self, **kw) -> SyncRequest:
        return SyncRequest(
            dag_id="dag_tiktok_types",
            run_id=f"run_{next(_runs)}",
            platform="tiktok",
            account=self.account,
            segment_name="per_type_users",
            schema=SCHEMA,
            logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
            **kw,
        )

    def plan(self, counts: ExtractCounts, **kw) -> dict:
        staged = StagedGroup(counts.staged["tiktok"]["path"])
        return plan_sync(self.dest(), self.store, self.req(**kw), staged, retry=FAST)

    def sync(self, counts: ExtractCounts) -> SyncOutcome:
        staged = StagedGroup(counts.staged["tiktok"]["path"])
        return sync_audience(self.dest(), self.store, self.req(), staged, retry=FAST)

    def members(self, audience_id: str) -> dict[str, set[str]]:
        return {t: self.app.members(i) for t, i in family_parts(audience_id).items()}


@pytest.fixture
def world(fresh_sandbox, state_url: str, tmp_path: Path) -> Iterator[World]:
    w = World(fresh_sandbox, state_url, tmp_path)
    yield w
    w.store.engine.dispose()


def phone_warnings(plan: dict) -> tuple[list[str], list[str]]:
    warnings = plan["warnings"]
    return [w for w in warnings if "phone audience" in w], [w for w in warnings if "e-mail audience" in w]


@pytest.mark.timeout(300)
def test_too_few_phones_refuses_the_phone_audience_alone_and_counts_each_member_by_what_reached_tiktok(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    customers = [customer(i) for i in range(1_400)]
    first = world.extract(customers)
    assert (first.valid, first.reused) == (1_400, 0)

    plan = world.plan(first)
    assert plan["identifiers"] == {"EMAIL_SHA256": 1_200, "PHONE_SHA256": 600}
    phone, email = phone_warnings(plan)
    assert email == [] and len(phone) == 1, plan["warnings"]
    assert "600 member(s) of the group have a phone identifier" in phone[0]
    assert "segment_too_small" in phone[0] and "PHONE_SHA256" in phone[0]
    assert len(plan["warnings"]) == 1  # the whole group (1,400) is big enough: no group-size warning

    mark = world.app.last_seq()
    with caplog.at_level(logging.WARNING):
        out = world.sync(first)
    assert out.refused == SEGMENT_TOO_SMALL
    # TikTok: the e-mail audience took the update, exactly the 1,200 e-mails; the phone audience refused
    # it (appending 600 to an empty audience leaves 600) and holds nothing
    assert world.members(out.audience_id) == {
        **sent(customers),
        "PHONE_SHA256": set(),
    }
    updates = [e for e in world.app.requests_log(mark) if e["path"].endswith("update/")]
    assert [(e["code"], e.get("rows")) for e in updates] == [(0, 1_200), (40002, None)]
    # the counts: the 1,200 with an e-mail reached TikTok (400 of them with a refused phone too): sent;
    # the 200 with only a phone reached nothing: failed, as segment_too_small
    c = out.counts
    assert (c["total"], c["sent"], c["failed"], c["in_progress"], c["pending"]) == (1_400, 1_200, 200, 0, 0)
    assert (out.run["added"], out.waiting) == (1_200, 0)
    (note,) = [n for n in out.notes if n.startswith("segment too small")]
    assert "phone audience (PHONE_SHA256" in note and "less than 1,000" in note
    assert "e-mail (EMAIL_SHA256) audience(s) took it" in note
    assert "200 member(s) of the add upload have only refused identifiers: failed, not on tiktok" in note
    row = metrics_row({"destination": "tiktok"}, out.as_xcom(), out.counts, None, extract_invalid=0)
    assert (row["outcome"], row["sent"], row["failed"], row["run_added"]) == (
        SEGMENT_TOO_SMALL,
        1_200,
        200,
        1_200,
    )
    assert "phone audience (PHONE_SHA256" in row["note"]
    logged = [r.getMessage() for r in caplog.records if "segment too small" in r.getMessage()]
    assert any("phone audience (PHONE_SHA256" in m and "e-mail audience(s) took it" in m for m in logged)

    # a rerun of the unchanged group: the 1,200 sent rows are reused from the ledger by fingerprint, the
    # 200 failed ones hashed again; the plan counts both and still warns for the phone audience alone
    again = world.extract(customers)
    assert (again.reused, again.hashed) == (1_200, 200)
    reuse = StagedGroup(again.staged["tiktok"]["path"]).reuse
    entry = world.store.get_registry("tiktok", world.account, "per_type_users")
    assert reuse is not None and entry is not None  # the plan may compare the changed rows only
    assert (reuse.registry_id, reuse.generation) == (entry.id, world.store.ledger_generation(entry.id))
    for kw in ({}, {"exclude_segments": ("no_such_segment",)}):  # changed rows only / every slice
        plan = world.plan(again, **kw)
        assert plan["identifiers"] == {"EMAIL_SHA256": 1_200, "PHONE_SHA256": 600}, kw
        phone, email = phone_warnings(plan)
        assert email == [] and len(phone) == 1 and "600 member(s)" in phone[0], (kw, plan["warnings"])
        assert (plan["adds"], plan["unchanged"], plan["removes"]) == (200, 1_200, 0)


def test_phones_reach_their_audience_once_1000_go_in_one_update(world: World) -> None:
    customers = [customer(i) for i in range(1_400)]
    first = world.sync(world.extract(customers))
    # 800 more customers with a phone only: with the 200 that failed, 1,000 phones go in one append
    grown = customers + [
        {"customer_id": f"cust-{i:05d}", "email": "", "phone": f"+44 20 7946 {i:04d}"}
        for i in range(1_400, 2_200)
    ]
    counts = world.extract(grown)
    plan = world.plan(counts)
    assert plan["identifiers"] == {"EMAIL_SHA256": 1_200, "PHONE_SHA256": 1_400}
    assert plan["warnings"] == []
    out = world.sync(counts)
    assert (out.refused, out.counts["sent"], out.counts["failed"], out.run["added"]) == ("", 2_200, 0, 1_000)
    # what the README documents: the 400 members counted sent through the e-mail audience while their phone
    # was refused are not sent again (they are unchanged), so the phone audience holds the 1,000 phone-only
    phone_only = [c for c in grown if not c["email"]]
    assert world.members(first.audience_id) == {
        **sent(customers),
        "PHONE_SHA256": sent(phone_only)["PHONE_SHA256"],
    }


def test_a_refused_removal_stays_owed_only_for_members_the_refused_audience_still_holds(world: World) -> None:
    def person(i: int) -> dict[str, str]:  # 2,000 e-mails, the first 1,100 with a phone too
        return {
            "customer_id": f"cust-{i:05d}",
            "email": f"member.{i}@example.org",
            "phone": f"+44 20 7946 {i:04d}" if i < 1_100 else "",
        }

    everyone = [person(i) for i in range(2_000)]
    first = world.sync(world.extract(everyone))
    assert (first.refused, first.counts["sent"]) == ("", 2_000)
    # 200 members with both identifiers leave, and 100 with an e-mail only: the e-mail audience keeps 1,700,
    # the phone audience would keep 900, so TikTok refuses the phone removal
    stay = [person(i) for i in range(200, 1_900)]
    out = world.sync(world.extract(stay))
    assert out.refused == SEGMENT_TOO_SMALL
    assert world.members(first.audience_id) == {**sent(stay), "PHONE_SHA256": sent(everyone)["PHONE_SHA256"]}
    # the 100 e-mail-only leavers are gone from TikTok: removed; the 200 whose phone the phone audience still
    # holds stay to be removed (their e-mails are already off the e-mail audience)
    c = out.counts
    assert (c["sent"], c["removed"], c["removing"], out.run["removed"]) == (1_700, 100, 200, 100)
    assert any(
        "phone audience (PHONE_SHA256" in n and "200 member(s) of the remove upload stay to be removed" in n
        for n in out.notes
    )
