"""The state's secret keys: keyed member ids and row hashes, and encryption of values sent unhashed.

Two independent keys, both 32 random bytes written as URL-safe base64 (what
``cryptography.fernet.Fernet.generate_key()`` prints):

- ``member_id_key``: ``member_id(key) = HMAC-SHA256(member_id_key, SHA-256(str(key).strip()))``. The inner
  SHA-256 is the v1 member id, so a v1 ledger can be re-keyed without the raw customer keys (see
  ``migrations.py``). Without the key, a member id cannot be matched to an (enumerable) customer id.
  ``row_hash`` (did a member's identifiers change?) is an HMAC under a key derived from it, because a
  plain hash of a row holding only an unhashed external id would be as enumerable as the id.
- ``encryption_key``: a Fernet key. Values a platform takes *unhashed* (Meta ``MADID``, ``EXTERN_ID``)
  must be kept, because a removal has to resend the exact value; they are stored only as Fernet tokens
  (staged Parquet, stage table, ledger payloads) and decrypted only when a row is read for sending.

Which schema keys are unhashed is read from the normalisation rules (``FieldRule.hashed``), not listed
here. Keys never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.normalize import RULES

log = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_FIELDS = ("member_id_key", "encryption_key")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
GENERATE_HINT = 'generate one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


class StateKeyError(AudienceSyncError):
    """A key is missing, malformed, or not the one the state database was written with."""


def _unhashed_schema_keys() -> frozenset[str]:
    """Every platform schema key whose value is sent unhashed, from the normalisation rules."""
    unhashed: set[str] = set()
    hashed: set[str] = set()
    for rules in RULES.values():
        for rule in rules.fields.values():
            (hashed if rule.hashed else unhashed).update(rule.keys)
    clash = unhashed & hashed
    if clash:  # payloads carry no platform, so a key name must mean the same on every platform
        raise RuntimeError(f"schema keys both hashed and unhashed across platforms: {sorted(clash)}")
    return frozenset(unhashed)


#: schema keys whose values are raw identifiers (encrypted at rest), e.g. Meta MADID and EXTERN_ID
ENCRYPTED_KEYS: frozenset[str] = _unhashed_schema_keys()


def legacy_member_id(key: object) -> str:
    """The v1 member id: plain SHA-256 of the member key. Never stored; input of :meth:`StateKeys.member_id`."""
    return hashlib.sha256(str(key).strip().encode("utf-8")).hexdigest()


def payload_json(schema: Sequence[str], values: Sequence[str]) -> str:
    """The canonical JSON of a row (schema order kept: it is the order values are sent in)."""
    return json.dumps(dict(zip(schema, values, strict=True)), separators=(",", ":"))


def _decode_key(text: object, field: str, source: str) -> bytes:
    fix = f"set {source} field '{field}' to 32 random bytes as URL-safe base64 ({GENERATE_HINT})"
    if not isinstance(text, str) or not _B64URL.match(text.strip()):
        raise StateKeyError(f"{source}: field '{field}' is not a URL-safe base64 key. Fix: {fix}")
    try:
        raw = base64.urlsafe_b64decode(text.strip())
    except (binascii.Error, ValueError):
        raise StateKeyError(f"{source}: field '{field}' is not valid base64. Fix: {fix}") from None
    if len(raw) != KEY_BYTES:
        raise StateKeyError(
            f"{source}: field '{field}' decodes to {len(raw)} bytes, expected {KEY_BYTES}. Fix: {fix}"
        )
    return raw


def _hmac_sha256(key: bytes) -> Callable[[bytes], str]:
    """HMAC-SHA256 hex of a message under ``key`` (RFC 2104), with the padded key hashed once.

    Equal to ``hmac.new(key, msg, hashlib.sha256).hexdigest()``, about twice as fast: every member of
    every run goes through it (member id and row hash), and ``hmac.new`` sets the key up per call.
    """
    padded = key.ljust(64, b"\0")  # SHA-256 block size; keys here are 32 bytes
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def mac(message: bytes) -> str:
        i = inner.copy()
        i.update(message)
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    return mac


def _hmac_sha256_many(key: bytes) -> Callable[[Iterable[bytes | memoryview]], list[str]]:
    """:func:`_hmac_sha256` over many messages in one loop (no Python call per message)."""
    padded = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def macs(messages: Iterable[bytes | memoryview]) -> list[str]:
        out = []
        append = out.append
        for message in messages:
            i = inner.copy()
            i.update(message)
            o = outer.copy()
            o.update(i.digest())
            append(o.hexdigest())
        return out

    return macs


class StateKeys:
    """The member-id key and the encryption key of one state database."""

    __slots__ = (
        "_member_key",
        "_row_key",
        "_enc_key",
        "_fernet",
        "_member_mac",
        "_row_mac",
        "_member_macs",
        "_row_macs",
    )

    def __init__(self, member_id_key: bytes, encryption_key: bytes) -> None:
        if len(member_id_key) != KEY_BYTES or len(encryption_key) != KEY_BYTES:
            raise StateKeyError(f"state keys must be {KEY_BYTES} bytes each")
        self._member_key = member_id_key
        # domain separation: a row hash can never equal a member id computed from the same bytes
        self._row_key = hmac.new(member_id_key, b"audience-sync row hash v2", hashlib.sha256).digest()
        self._enc_key = encryption_key
        self._fernet = Fernet(base64.urlsafe_b64encode(encryption_key))
        self._member_mac = _hmac_sha256(self._member_key)
        self._row_mac = _hmac_sha256(self._row_key)
        self._member_macs = _hmac_sha256_many(self._member_key)
        self._row_macs = _hmac_sha256_many(self._row_key)

    # ------------------------------------------------------------------ construction
    @classmethod
    def generate(cls) -> StateKeys:
        return cls(os.urandom(KEY_BYTES), os.urandom(KEY_BYTES))

    @classmethod
    def from_text(cls, values: Mapping[str, object], source: str) -> StateKeys:
        """Keys from ``{"member_id_key": ..., "encryption_key": ...}``; errors name ``source`` and the field."""
        missing = [f for f in KEY_FIELDS if not values.get(f)]
        if missing:
            raise StateKeyError(
                f"{source}: field(s) {', '.join(repr(f) for f in missing)} missing. Fix: set both "
                f"{' and '.join(KEY_FIELDS)} ({GENERATE_HINT})"
            )
        return cls(*(_decode_key(values[f], f, source) for f in KEY_FIELDS))

    def as_text(self) -> dict[str, str]:
        """The keys as URL-safe base64, for a key file. Never log this."""
        return {
            "member_id_key": base64.urlsafe_b64encode(self._member_key).decode(),
            "encryption_key": base64.urlsafe_b64encode(self._enc_key).decode(),
        }

    def __repr__(self) -> str:
        return "StateKeys(<redacted>)"

    def __reduce__(self) -> None:  # type: ignore[override]
        # never pickled (XCom, serialized DAGs): keys are loaded from the connection in each task
        raise TypeError("StateKeys cannot be pickled")

    # ------------------------------------------------------------------ hashing
    def member_id(self, key: object) -> str:
        """The ledger's member id of a member key."""
        return self.rekey(legacy_member_id(key))

    def member_ids(self, keys: Iterable[object]) -> list[str]:
        """:meth:`member_id` of each key, in one loop (extraction's hot path)."""
        sha = hashlib.sha256
        return self._member_macs(
            sha(str(k).strip().encode("utf-8")).hexdigest().encode("ascii") for k in keys
        )

    def row_hashes(self, plain_payload_jsons: Iterable[str]) -> list[str]:
        """:meth:`row_hash` of each payload, in one loop."""
        return self._row_macs(p.encode("utf-8") for p in plain_payload_jsons)

    def row_hashes_utf8(self, plain_payload_jsons: Iterable[bytes | memoryview]) -> list[str]:
        """:meth:`row_hash` of each payload given as its UTF-8 bytes (e.g. slices of an Arrow buffer)."""
        return self._row_macs(plain_payload_jsons)

    def rekey(self, v1_member_id: str) -> str:
        """The v2 member id of a v1 (plain SHA-256) member id."""
        return self._member_mac(v1_member_id.encode("ascii"))

    def row_hash(self, plain_payload_json: str) -> str:
        """Keyed hash of a row's plaintext payload JSON: equal rows, equal hashes; no lookup table."""
        return self._row_mac(plain_payload_json.encode("utf-8"))

    def derive_key(self, label: bytes) -> bytes:
        """A 32-byte key for one purpose, derived from the member-id key (e.g. row fingerprints)."""
        return hmac.new(self._member_key, b"audience-sync derived key|" + label, hashlib.sha256).digest()

    def fingerprints(self) -> dict[str, str]:
        """Per key, an HMAC of a constant: identifies the key in the state database, reveals nothing."""
        return {
            "member_id_key": hmac.new(
                self._member_key, b"audience-sync key check", hashlib.sha256
            ).hexdigest(),
            "encryption_key": hmac.new(self._enc_key, b"audience-sync key check", hashlib.sha256).hexdigest(),
        }

    # ------------------------------------------------------------------ encryption
    def seal(self, schema: Sequence[str], values: Sequence[str]) -> list[str]:
        """``values`` with every non-empty unhashed identifier replaced by its Fernet token."""
        return [self.seal_value(v) if k in ENCRYPTED_KEYS else v for k, v in zip(schema, values, strict=True)]

    def seal_value(self, value: str) -> str:
        """One unhashed identifier as its Fernet token (``""`` stays ``""``)."""
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii") if value else value

    def seal_payload(self, payload: Mapping[str, str]) -> dict[str, str]:
        return dict(zip(payload, self.seal(list(payload), list(payload.values())), strict=True))

    def open_payload(self, payload: Mapping[str, str]) -> dict[str, str]:
        """A stored payload with its encrypted values decrypted (key order kept)."""
        return {k: self._decrypt(v) if v and k in ENCRYPTED_KEYS else v for k, v in payload.items()}

    def _decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError):
            raise StateKeyError(
                "a stored identifier cannot be decrypted with the configured encryption_key: the state "
                "was written with another key. Fix: configure the encryption_key this state was created with."
            ) from None

    # ------------------------------------------------------------------ staging
    def staged_row(self, mid: str, schema: Sequence[str], values: Sequence[str]) -> tuple[str, str, str]:
        """(member_id, row_hash, sealed payload JSON) for the ledger stage, from plaintext ``values``."""
        return (
            mid,
            self.row_hash(payload_json(schema, values)),
            payload_json(schema, self.seal(schema, values)),
        )


# ---------------------------------------------------------------------- key files
def load_key_file(path: str | Path, *, create: bool = True) -> StateKeys:
    """Keys from a JSON key file; with ``create``, generate it (mode 0600) when it does not exist.

    Creation is atomic (write a private temp file, then hard-link it into place), so two processes
    starting at once end up with the same keys.
    """
    p = Path(path)
    source = f"key file {p}"
    if not p.exists():
        if not create:
            raise StateKeyError(f"{source} does not exist")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")  # unique per process and thread
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(StateKeys.generate().as_text(), f)
                f.write("\n")
            with contextlib.suppress(FileExistsError):  # another process won: use its keys
                os.link(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        # debug, not info: the CLI prints JSON on stdout, where Airflow's log handler writes too
        log.debug("Generated new state keys in %s (mode 0600); keep this file with the state database", p)
    if p.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; restrict it with: chmod 600 %s", source, p)
    try:
        values = json.loads(p.read_text())
    except (OSError, ValueError):
        raise StateKeyError(f"{source} is not a JSON object with {' and '.join(KEY_FIELDS)}") from None
    if not isinstance(values, dict):
        raise StateKeyError(f"{source} is not a JSON object with {' and '.join(KEY_FIELDS)}")
    return StateKeys.from_text(values, source)
