"""State keys: keyed member ids and row hashes, encryption of unhashed identifiers, key files and the hook's
key sources (connection extras, key file, generated beside a SQLite state; PostgreSQL needs configured keys)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import pickle
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeyError, StateKeys, load_key_file, payload_json
from audience_sync.core.ledger import StateStore
from audience_sync.core.normalize import RULES
from audience_sync.core.uploads import UploadLog
from tests.ledger_steps import apply_group


def test_member_id_is_an_hmac_of_the_v1_id_and_depends_on_the_key() -> None:
    keys = StateKeys.generate()
    v1 = hashlib.sha256(b"cust-42").hexdigest()
    raw_key = StateKeys.from_text(keys.as_text(), "t")  # the text form round-trips
    member_key = base64.urlsafe_b64decode(keys.as_text()["member_id_key"])
    expected = hmac.new(member_key, v1.encode(), hashlib.sha256).hexdigest()
    assert (
        keys.member_id(" cust-42 ") == keys.member_id("cust-42") == raw_key.member_id("cust-42") == expected
    )
    assert keys.member_id("cust-42") != v1
    assert StateKeys.generate().member_id("cust-42") != keys.member_id("cust-42")
    assert keys.member_id(42) == keys.member_id("42")


def test_row_hash_is_keyed_so_a_lone_external_id_is_not_enumerable() -> None:
    keys = StateKeys.generate()
    text = payload_json(["EXTERN_ID"], ["123"])
    assert keys.row_hash(text) == keys.row_hash(text)
    assert keys.row_hash(text) != hashlib.sha256(text.encode()).hexdigest()
    assert keys.row_hash(text) != StateKeys.generate().row_hash(text)
    assert keys.row_hash(text) != keys.rekey(text)  # the row key is derived, not the member key itself


def test_unhashed_keys_come_from_the_normalisation_rules() -> None:
    unhashed = {k for r in RULES.values() for rule in r.fields.values() if not rule.hashed for k in rule.keys}
    assert ENCRYPTED_KEYS == unhashed
    assert {"MADID", "EXTERN_ID"} <= ENCRYPTED_KEYS and "EMAIL" not in ENCRYPTED_KEYS


def test_staged_row_seals_only_unhashed_values_and_hashes_the_plaintext() -> None:
    keys = StateKeys.generate()
    schema = ["EMAIL", "MADID", "EXTERN_ID"]
    plain = ["a" * 64, "6d92078a-8246-4ba4-ae5b-76104861e7dc", ""]
    mid, row_hash, payload = keys.staged_row("m1", schema, plain)
    stored = json.loads(payload)
    assert mid == "m1" and row_hash == keys.row_hash(payload_json(schema, plain))
    assert stored["EMAIL"] == plain[0] and stored["EXTERN_ID"] == ""
    assert stored["MADID"].startswith("gAAAA") and plain[1] not in payload
    assert keys.open_payload(stored) == dict(zip(schema, plain, strict=True))
    assert list(keys.open_payload(stored)) == schema  # the order values are sent in
    # Fernet tokens are randomised, the row hash is not: an unchanged row stays unchanged
    assert keys.staged_row("m1", schema, plain)[1] == row_hash
    with pytest.raises(StateKeyError, match="cannot be decrypted") as exc:
        StateKeys.generate().open_payload(stored)
    assert plain[1] not in str(exc.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"member_id_key": "x" * 44}, "'encryption_key' missing"),
        (
            {"member_id_key": "not base64!", "encryption_key": "A" * 43 + "="},
            "'member_id_key' is not a URL-safe",
        ),
        ({"member_id_key": "QUJD", "encryption_key": "A" * 43 + "="}, "'member_id_key' decodes to 3 bytes"),
    ],
)
def test_malformed_keys_name_the_source_the_field_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(StateKeyError, match=message) as exc:
        StateKeys.from_text(values, "Airflow connection 'audience_sync_db' extra")
    text = str(exc.value)
    assert "audience_sync_db" in text and "Fix:" in text and "generate_key" in text
    for v in values.values():
        if len(v) > 4:
            assert v not in text


def test_keys_never_show_in_repr_and_are_never_pickled() -> None:
    keys = StateKeys.generate()
    assert "redacted" in repr(keys)
    for text in keys.as_text().values():
        assert text not in repr(keys)
    with pytest.raises(TypeError):
        pickle.dumps(keys)


def test_key_file_is_generated_once_with_mode_0600_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sub" / "state.db.keys"
    caplog.set_level(logging.DEBUG)
    results: list[StateKeys] = []
    threads = [threading.Thread(target=lambda: results.append(load_key_file(path))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(threads)  # no opener failed
    assert path.stat().st_mode & 0o777 == 0o600
    assert len({k.member_id("x") for k in results}) == 1  # racing first uses agree on one key
    assert load_key_file(path, create=False).member_id("x") == results[0].member_id("x")
    assert not list(path.parent.glob(".*.tmp"))
    for text in json.loads(path.read_text()).values():
        assert text not in caplog.text
    path.write_text("{}")
    with pytest.raises(StateKeyError, match="missing"):
        load_key_file(path)
    path.write_text("not json")
    with pytest.raises(StateKeyError, match="not a JSON object"):
        load_key_file(path)


def test_store_without_keys_serves_counts_but_not_payloads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    keys = StateKeys.generate()
    store = StateStore(url, keys=keys)
    entry, _ = store.register("meta", "act_1", "k_users", "1", "created")
    group = [keys.staged_row(keys.member_id(1), ["EMAIL", "MADID"], ["a" * 64, "m-1"])]
    apply_group(store, entry.id, group, "r1")
    (batch,) = list(UploadLog(store).iter_work(entry.id, "add", 10))
    assert batch[0].payload == {"EMAIL": "a" * 64, "MADID": "m-1"}  # decrypted for sending
    reader = StateStore(url)
    assert reader.ledger_counts(entry.id)["pending"] == 1
    with pytest.raises(StateKeyError, match="needs the state's keys"):
        list(UploadLog(reader).iter_work(entry.id, "add", 10))
    with sa.create_engine(url).connect() as c:
        assert "m-1" not in str(c.execute(sa.text("SELECT * FROM as_member_ledger")).all())


# ------------------------------------------------------------------------------ the hook
@pytest.fixture
def hook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))

    def set_conn(conn: dict | None) -> None:
        if conn is None:
            monkeypatch.delenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", raising=False)
        else:
            monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps(conn))

    return set_conn


def test_hook_default_sqlite_generates_a_key_file_beside_the_state(hook_env, tmp_path: Path) -> None:
    from audience_sync.hooks.state import AudienceSyncStateHook, default_sqlite_path, key_file_beside

    hook_env(None)
    store = AudienceSyncStateHook().store
    key_file = key_file_beside(default_sqlite_path())
    assert key_file.name == "state.db.keys" and key_file.stat().st_mode & 0o777 == 0o600
    again = AudienceSyncStateHook()
    assert again.keys.member_id("c1") == store.keys.member_id("c1")  # type: ignore[union-attr]
    # losing the key file must not silently re-key the state: the next open fails fast
    key_file.unlink()
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="audience_sync_db.*not the one"):
        _ = AudienceSyncStateHook().store


def test_hook_reads_keys_from_connection_extras_and_key_file(hook_env, tmp_path: Path) -> None:
    from audience_sync.hooks.state import AudienceSyncStateHook

    keys = StateKeys.generate()
    hook_env({"conn_type": "sqlite", "host": str(tmp_path / "a.db"), "extra": keys.as_text()})
    assert AudienceSyncStateHook().store.keys.member_id("c") == keys.member_id("c")  # type: ignore[union-attr]
    assert not (tmp_path / "a.db.keys").exists()

    shared = tmp_path / "shared" / "audience_sync.keys"
    hook_env({"conn_type": "sqlite", "host": str(tmp_path / "b.db"), "extra": {"key_file": str(shared)}})
    first = AudienceSyncStateHook().keys
    assert shared.exists() and AudienceSyncStateHook().keys.member_id("c") == first.member_id("c")


def test_hook_fails_fast_on_malformed_keys_and_on_postgres_without_keys(hook_env, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from audience_sync.hooks.state import AudienceSyncStateHook

    bad = {"member_id_key": "too-short", "encryption_key": StateKeys.generate().as_text()["encryption_key"]}
    hook_env({"conn_type": "sqlite", "host": str(tmp_path / "a.db"), "extra": bad})
    with pytest.raises(AirflowFailException) as exc:
        _ = AudienceSyncStateHook().keys
    text = str(exc.value)
    assert "'audience_sync_db'" in text and "'member_id_key'" in text and "Fix" in text
    assert bad["encryption_key"] not in text and "too-short" not in text

    hook_env({"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "schema": "x"})
    with pytest.raises(
        AirflowFailException, match="'audience_sync_db' \\(postgresql\\) has no state keys.*Fix"
    ):
        _ = AudienceSyncStateHook().keys
