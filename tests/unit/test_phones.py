"""Phone parsing (core/normalize/phones.py): the two libraries agree; the choice of one and the fallback."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Iterator

import phonenumbers
import pytest
import rphonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from audience_sync.core.normalize import normalize_field, phones
from audience_sync.core.normalize.phones import SELF_CHECK, Library, PhoneLibraryError, parts_with
from audience_sync.core.normalize.values import InvalidValue
from audience_sync.core.settings import SettingsError, reload

REGIONS = (
    "US", "GB", "IN", "FR", "DE", "IT", "ES", "BR", "MX", "JP", "AU", "CA", "NL", "SE", "PL", "ZA", "NG",
    "KR", "TR", "AR",
)  # fmt: skip
SETTING = "AUDIENCE_SYNC_PHONE_LIBRARY"


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test chooses the library anew, from the environment it sets; later tests do the same."""
    monkeypatch.delenv(SETTING, raising=False)
    phones._reset()
    yield
    phones._reset()
    monkeypatch.delenv(SETTING, raising=False)
    reload()


def _corpus() -> list[tuple[str, str | None]]:
    """20 regions x 100: example mobile/fixed numbers with new last digits, in seven ways of writing them."""
    rng = random.Random(20260101)
    rows: list[tuple[str, str | None]] = []
    for region in REGIONS:
        for i in range(100):
            number_type = PhoneNumberType.MOBILE if i % 2 else PhoneNumberType.FIXED_LINE
            example = phonenumbers.example_number_for_type(region, number_type)
            nsn = phonenumbers.national_significant_number(example)
            tail = rng.randint(1, 3)
            nsn = nsn[:-tail] + "".join(rng.choice("0123456789") for _ in range(tail))
            number = phonenumbers.parse(f"+{example.country_code}{nsn}", None)
            cc = example.country_code
            written = (
                phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL),
                phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
                f"+{cc}{nsn}",
                f"00{cc} {nsn}",
                f"{cc}{nsn}",
                phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL).replace(" ", "."),
                f"{nsn[:-2]}",  # too short
            )[i % 7]
            rows.append((written, None if i % 10 == 3 else region))
    return rows


def test_both_libraries_agree_on_a_small_corpus() -> None:
    reference, fast = Library.load("phonenumbers"), Library.load("rphonenumbers")
    corpus = _corpus() + list(SELF_CHECK)
    expected = [parts_with(reference, text, region) for text, region in corpus]
    got = [parts_with(fast, text, region) for text, region in corpus]
    differ = [(row, e, g) for row, e, g in zip(corpus, expected, got, strict=True) if e != g]
    assert differ == []
    valid = sum(not isinstance(e, str) for e in expected)
    assert 0.5 * len(corpus) < valid < len(corpus)  # the corpus holds both valid and invalid numbers


def test_e164_parts_keeps_the_rules_and_messages_of_the_normaliser() -> None:
    assert phones.e164_parts("020 8366 1177", "GB") == (44, "2083661177")
    assert phones.e164_parts("0039 02 1234 5678", None) == (39, "0212345678")  # Italian leading zero kept
    with pytest.raises(InvalidValue, match=r"^not a valid phone number for region GB$"):
        phones.e164_parts("12", "GB")
    with pytest.raises(InvalidValue, match=r"no country code, and no country to read it with"):
        phones.e164_parts("07400 123456", None)
    assert normalize_field("meta", "phone", "+44 7400 123456").normalized == "447400123456"


def test_the_same_number_is_parsed_once_valid_or_not() -> None:
    phones.e164_parts("07400 123456", "GB")
    phones.e164_parts("07400 123456", "GB")
    for _ in range(2):
        with pytest.raises(InvalidValue):
            phones.e164_parts("12", "GB")
    info = phones._cached_parts.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (2, 2, 1024)


def test_the_setting_can_force_phonenumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "phonenumbers")
    assert phones.phone_library() == "phonenumbers"
    assert phones.e164_parts("+1 201-555-0123", "US") == (1, "2015550123")


def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "fastest")
    with pytest.raises(SettingsError, match=rf"^{SETTING} is 'fastest' but must be 'auto', 'rphonenumbers'"):
        phones.phone_library()


def test_auto_uses_rphonenumbers_when_it_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same metadata release as the installed phonenumbers (whatever the real pins say), self-check passes.
    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", phonenumbers.__version__)
    assert phones.phone_library() == "rphonenumbers"


def test_auto_falls_back_when_rphonenumbers_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "rphonenumbers", None)
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        assert phones.phone_library() == "phonenumbers"
        assert phones.e164_parts("07400 123456", "GB") == (44, "7400123456")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot be imported" in warning.getMessage()


def test_auto_falls_back_when_the_metadata_release_differs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", "0.0.1")
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        assert phones.phone_library() == "phonenumbers"
    assert "metadata of phonenumbers 0.0.1" in caplog.text


def test_auto_falls_back_when_the_self_check_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", phonenumbers.__version__)
    monkeypatch.setattr(rphonenumbers, "is_valid_number", lambda number: True)  # a broken build
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        assert phones.phone_library() == "phonenumbers"
    assert "it reads '" in caplog.text


def test_an_explicit_rphonenumbers_is_used_with_other_metadata_and_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SETTING, "rphonenumbers")
    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", "0.0.1")
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        assert phones.phone_library() == "rphonenumbers"
    assert "metadata of phonenumbers 0.0.1" in caplog.text


def test_an_explicit_rphonenumbers_that_cannot_be_used_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "rphonenumbers")
    monkeypatch.setitem(sys.modules, "rphonenumbers", None)
    with pytest.raises(PhoneLibraryError, match=rf"{SETTING} is 'rphonenumbers' but .* Fix: ") as info:
        phones.e164_parts("07400 123456", "GB")
    assert f"{SETTING}=auto" in str(info.value)


def test_a_value_rphonenumbers_fails_on_is_read_with_phonenumbers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_parse = rphonenumbers.parse

    def parse(text: str, region: str | None) -> object:
        if text == "07400 654321":  # not in SELF_CHECK, so the library is still chosen
            raise RuntimeError("simulated failure of the native code")
        return real_parse(text, region)

    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", phonenumbers.__version__)
    monkeypatch.setattr(rphonenumbers, "parse", parse)
    assert phones.phone_library() == "rphonenumbers"
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        assert phones.e164_parts("07400 654321", "GB") == (44, "7400654321")
    assert "rphonenumbers raised on one value; parsed it with phonenumbers" in caplog.text


def test_a_column_is_read_as_e164_parts_reads_each_value_falling_back_where_rphonenumbers_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_parse = rphonenumbers.parse

    def parse(text: str, region: str | None) -> object:
        if text == "07400 654321":
            raise RuntimeError("simulated failure of the native code")
        return real_parse(text, region)

    monkeypatch.setattr(rphonenumbers, "__phonenumbers_version__", phonenumbers.__version__)
    monkeypatch.setattr(rphonenumbers, "parse", parse)
    texts = ["07400 654321", None, "+44 7400 123456", "12345", "6502530000", "447400123456"]
    regions = ["GB", "GB", None, "GB", "US", None]
    with caplog.at_level(logging.WARNING, logger=phones.__name__):
        got = phones.parts_column(texts, regions)
    want: list[object] = []
    for text, region in zip(texts, regions, strict=True):
        if text is None:
            want.append(None)
            continue
        try:
            want.append(phones.e164_parts(text, region))
        except InvalidValue as exc:
            want.append(str(exc))
    assert got == want
    assert got[0] == (44, "7400654321") and isinstance(got[3], str)
    assert "rphonenumbers raised on one value; parsed it with phonenumbers" in caplog.text
