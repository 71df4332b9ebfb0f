"""Segment-name rules (strict and relaxed), their error, and compliant-name suggestions.

Digits in a name are spelled out *digit by digit* when a compliant name is suggested (``2026`` ->
``two_zero_two_six``), which keeps different numbers distinct and needs no number-to-words grammar.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from audience_sync.core.campaign.base import Invalid
from audience_sync.core.settings import SettingsError, settings

SEGMENT_NAME_RULE_ENV = "AUDIENCE_SYNC_SEGMENT_NAME_RULE"
SEGMENT_NAME_MIN = 3
SEGMENT_NAME_MAX = 128
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_STRICT_SEGMENT_RE = re.compile(r"[a-z]+(?:_[a-z]+)*")
_RELAXED_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9_\- ]+")
_STRICT_RULE_TEXT = (
    f"{SEGMENT_NAME_MIN}-{SEGMENT_NAME_MAX} characters, lowercase letters a-z only, words separated by "
    "single underscores (no capitals, numbers, spaces or other special characters)"
)
_RELAXED_RULE_TEXT = (
    f"1-{SEGMENT_NAME_MAX} characters of letters, digits, underscore, hyphen and space "
    "(no other special characters, no leading or trailing space)"
)


class SegmentNameError(ValueError):
    """A segment name breaks the naming rule. ``reason`` names the offence, ``suggestion`` a fix."""

    def __init__(self, name: str, reason: str, suggestion: str, rule: str) -> None:
        self.name = name
        self.reason = reason
        self.suggestion = suggestion
        self.rule = rule
        super().__init__(f"segment name '{name}' {reason}. Suggested name: '{suggestion}'.")


def segment_name_rule() -> str:
    """Return the configured segment name rule: ``"strict"`` (default) or ``"relaxed"``.

    Read from ``$AUDIENCE_SYNC_SEGMENT_NAME_RULE``; any other value raises SettingsError (a ValueError).
    """
    return settings().segment_name_rule


def _quote_chars(chars: Iterable[str]) -> str:
    """Render offending characters once each, in order: ``'I', 'W', ' ' (space)``."""
    seen: list[str] = []
    for char in chars:
        if char not in seen:
            seen.append(char)
    return ", ".join("' ' (space)" if c == " " else repr(c) for c in seen)


def _strict_reasons(name: str) -> list[str]:
    """Return what is wrong with ``name`` under the strict rule (empty when fine)."""
    reasons: list[str] = []
    if len(name) < SEGMENT_NAME_MIN:
        reasons.append(f"is too short ({len(name)} characters, at least {SEGMENT_NAME_MIN})")
    if len(name) > SEGMENT_NAME_MAX:
        reasons.append(f"is too long ({len(name)} characters, at most {SEGMENT_NAME_MAX})")
    capitals = [c for c in name if c.isupper()]
    numbers = [c for c in name if c in "0123456789"]
    special = [c for c in name if not ("a" <= c <= "z" or c == "_" or c in capitals or c in numbers)]
    if capitals:
        reasons.append(f"contains capital letters {_quote_chars(capitals)}")
    if numbers:
        reasons.append(f"contains numbers {_quote_chars(numbers)}")
    if special:
        reasons.append(f"contains special characters {_quote_chars(special)}")
    if "_" in name and (name.startswith("_") or name.endswith("_") or "__" in name):
        reasons.append("has a leading, trailing or doubled underscore (underscore only separates words)")
    return reasons


def _relaxed_reasons(name: str) -> list[str]:
    """Return what is wrong with ``name`` under the relaxed rule (empty when fine)."""
    reasons: list[str] = []
    if not name.strip():
        reasons.append("is empty")
    if len(name) > SEGMENT_NAME_MAX:
        reasons.append(f"is too long ({len(name)} characters, at most {SEGMENT_NAME_MAX})")
    special = [c for c in name if not _RELAXED_SEGMENT_CHARS.fullmatch(c)]
    if special:
        reasons.append(f"contains special characters {_quote_chars(special)}")
    if name.strip() and name != name.strip():
        reasons.append("has a leading or trailing space")
    return reasons


def suggest_segment_name(name: str, *, strict: bool = True) -> str:
    """Propose a compliant segment name close to ``name``.

    Strict (default): accents are dropped, camelCase is split, every digit is spelled out as its own
    word (``Week1`` -> ``week_one``, ``2026`` -> ``two_zero_two_six``: digit by digit, so different
    numbers stay different), everything is lowercased, any other character becomes a single ``_``, the
    result is cut to 128 characters and padded with ``_segment`` when shorter than 3 characters.

    ``strict=False`` suggests a name for the relaxed rule: forbidden characters become ``_``.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    if not strict:
        text = re.sub(r"[^A-Za-z0-9_\- ]+", "_", text).strip(" _")[:SEGMENT_NAME_MAX].rstrip(" _")
        return text or "segment"
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    text = re.sub(r"[0-9]", lambda m: f"_{_DIGIT_WORDS[int(m.group())]}_", text)
    text = re.sub(r"[^a-z]+", "_", text.lower()).strip("_")
    text = text[:SEGMENT_NAME_MAX].rstrip("_")
    if not text:
        return "segment"
    if len(text) < SEGMENT_NAME_MIN:
        text = f"{text}_segment"
    return text


def check_segment_name(name: str, *, strict: bool | None = None) -> None:
    """Raise :class:`SegmentNameError` (a ValueError) when ``name`` breaks the segment naming rule.

    Strict rule (product spec, default): 3-128 characters, lowercase letters only, words separated by
    single underscores. Relaxed rule: 1-128 characters of letters, digits, underscore, hyphen, space.
    ``strict=None`` follows ``$AUDIENCE_SYNC_SEGMENT_NAME_RULE`` (``strict`` | ``relaxed``).
    The message names the offending characters and proposes a compliant name.
    """
    if not isinstance(name, str):
        raise ValueError("segment name must be text")
    if strict is None:
        strict = segment_name_rule() == "strict"
    if strict:
        reasons = _strict_reasons(name)
        if not reasons and not _STRICT_SEGMENT_RE.fullmatch(name):  # safety net, should not happen
            reasons = ["does not match the naming rule"]
    else:
        reasons = _relaxed_reasons(name)
    if reasons:
        rule = _STRICT_RULE_TEXT if strict else _RELAXED_RULE_TEXT
        raise SegmentNameError(name, "; ".join(reasons), suggest_segment_name(name, strict=strict), rule)


def validate_segment_name(value: str) -> str:
    """Pydantic adapter for :func:`check_segment_name`."""
    try:
        check_segment_name(value)
    except SegmentNameError as exc:
        raise Invalid(exc.reason, f"rename it to '{exc.suggestion}'; the rule: {exc.rule}") from None
    except SettingsError as exc:
        raise Invalid(exc.problem, exc.fix) from None
    return value


SegmentName = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(validate_segment_name)]
