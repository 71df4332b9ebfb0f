"""Turn pydantic's validation errors into (location, message, fix) a marketer can act on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from audience_sync.core.campaign.base import Invalid, Loc, Problem, did_you_mean
from audience_sync.core.campaign.destinations import destination_models, supported_platforms
from audience_sync.core.campaign.models import SYNC_MODES, Campaign
from audience_sync.core.normalize import IDENTIFIER_TYPES
from audience_sync.core.platforms import platforms

_EXAMPLES: dict[str, str] = {
    "campaign": "campaign: Abandoned cart July",
    "duration": "duration: {start: 2026-07-01, end: 2026-07-31}",
    "duration.start": "start: 2026-07-01",
    "schedule": 'schedule: "@daily"',
    "segment_name": "segment_name: abandoned_cart_users",
    "audience_group": (
        "audience_group: {sql: <file or query>, conn_id: <connection>, key: <column>, "
        "identifiers: {email: <column>}}"
    ),
    "audience_group.key": "key: customer_id",
    "audience_group.identifiers": "identifiers: {email: email}",
    "audience_group.consent.column": "column: ads_consent",
}
_TYPE_MESSAGES: dict[str, tuple[str, str]] = {
    "string_type": (
        "must be text",
        "write it as text; quote it if YAML reads it as a number, date or yes/no",
    ),
    "int_type": ("must be a whole number", "write a whole number such as 3"),
    "int_parsing": ("must be a whole number", "write a whole number such as 3"),
    "bool_type": ("must be true or false", "write true or false"),
    "date_type": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_parsing": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_from_datetime_parsing": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_from_datetime_inexact": ("must be a date without a time", "write the date as YYYY-MM-DD"),
    "model_type": ("must be a mapping of keys to values", "write 'key: value' lines indented under it"),
    "model_attributes_type": ("must be a mapping of keys to values", "write 'key: value' lines under it"),
    "dict_type": ("must be a mapping of keys to values", "write 'key: value' lines indented under it"),
    "tuple_type": ("must be a list", "write one '- item' line per entry"),
    "list_type": ("must be a list", "write one '- item' line per entry"),
    "string_too_short": ("must not be empty", "give it a value"),
    "path_type": ("must be a file path", "write a file path"),
}


def _destination_examples() -> dict[str, str]:
    """Examples for missing destination keys, from the registry (the first registered platform)."""
    specs = list(platforms().values())
    if not specs:
        return {}
    first = specs[0]
    example = f'{{platform: {first.name}, {first.account_field}: "{first.account_example}"}}'
    return {
        "destinations": f"destinations: [{example}]",
        "destinations[].platform": f"platform: {first.name}",
        **{f"destinations[].{s.account_field}": f'{s.account_field}: "{s.account_example}"' for s in specs},
    }


def _example(loc: Loc, raw_loc: Loc) -> str | None:
    """An example line for the missing key at ``loc``: the platform's own account example when the
    key belongs to a destination."""
    if len(raw_loc) >= 4 and raw_loc[0] == "destinations" and raw_loc[2] in platforms():
        spec = platforms()[str(raw_loc[2])]
        if raw_loc[-1] == spec.account_field:
            return f'{spec.account_field}: "{spec.account_example}"'
    return _EXAMPLES.get(_index_free(loc)) or _destination_examples().get(_index_free(loc))


def _clean_loc(loc: Iterable[str | int]) -> Loc:
    """Drop pydantic's internal parts (discriminator tags, ``[key]``) from an error location."""
    parts = list(loc)
    models = destination_models()
    cleaned: list[str | int] = []
    for i, part in enumerate(parts):
        if part == "[key]":
            continue
        if i >= 2 and parts[i - 2] == "destinations" and isinstance(parts[i - 1], int) and part in models:
            continue
        cleaned.append(part)
    return tuple(cleaned)


def format_loc(loc: Loc) -> str:
    """``("destinations", 0, "platform")`` -> ``destinations[0].platform``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _index_free(loc: Loc) -> str:
    """``destinations[0].platform`` -> ``destinations[].platform``."""
    return re.sub(r"\[\d+\]", "[]", format_loc(loc)) if loc else ""


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    """The pydantic FieldInfo whose alias (or name) is ``key``."""
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``annotation`` (through Optional, tuple, Annotated), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(raw_loc: Loc) -> list[str]:
    """Keys accepted in the mapping at pydantic location ``raw_loc``."""
    model: type[BaseModel] | None = Campaign
    parts = list(raw_loc)
    i = 0
    while i < len(parts) and model is not None:
        part = parts[i]
        if model is Campaign and part == "destinations":
            # ("destinations", index, tag, ...)
            tag = parts[i + 2] if i + 2 < len(parts) else None
            model = destination_models().get(tag) if isinstance(tag, str) else None
            i += 3
            continue
        if isinstance(part, int):
            i += 1
            continue
        field = _field_by_key(model, part)
        model = _submodel(field.annotation) if field is not None else None
        i += 1
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def convert_error(error: Mapping[str, Any]) -> Problem:
    """Turn one pydantic error into (location, message, fix)."""
    raw_loc: Loc = tuple(error["loc"])
    loc = _clean_loc(raw_loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, Invalid):
        return loc + cause.at, cause.message, cause.fix
    if kind == "missing":
        example = _example(loc, raw_loc)
        fix = f"add '{example}'" if example else f"add '{loc[-1]}: ...'"
        return loc, "is required but missing", fix
    if kind == "extra_forbidden":
        key = str(raw_loc[-1])
        allowed = _allowed_keys(raw_loc[:-1])
        return (
            loc,
            f"unknown key '{key}'",
            did_you_mean(key, allowed)
            + ("allowed keys here: " + ", ".join(allowed) if allowed else "remove it"),
        )
    if kind == "literal_error" and raw_loc[-1] == "[key]":
        key = str(raw_loc[-2])
        return (
            loc,
            f"unknown identifier type '{key}'",
            did_you_mean(key, IDENTIFIER_TYPES)
            + "supported identifier types: "
            + ", ".join(IDENTIFIER_TYPES),
        )
    if kind == "literal_error" and loc and loc[-1] == "sync_mode":
        return loc, "is not a known sync mode", "use one of: " + ", ".join(SYNC_MODES)
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", ""))
        names = supported_platforms()
        return (
            loc + ("platform",),
            f"unsupported platform '{tag}'",
            did_you_mean(tag, names) + "supported platforms: " + ", ".join(names),
        )
    if kind == "union_tag_not_found":
        return (
            loc + ("platform",),
            "is required but missing",
            ("add 'platform: <name>'; supported platforms: " + ", ".join(supported_platforms())),
        )
    if kind == "too_short" and loc and loc[-1] == "identifiers":
        return (
            loc,
            "needs at least one identifier",
            (
                "map an identifier type to its column, e.g. 'email: email'; types: "
                + ", ".join(IDENTIFIER_TYPES)
            ),
        )
    if kind == "too_short" and loc and loc[-1] == "destinations":
        return (
            loc,
            "needs at least one destination",
            "add " + _destination_examples().get("destinations", "destinations: [{platform: <name>, ...}]"),
        )
    if kind == "greater_than_equal":
        return (
            loc,
            f"must be {ctx.get('ge', 0)} or more",
            f"use a whole number of at least {ctx.get('ge', 0)}",
        )
    if kind in _TYPE_MESSAGES:
        message, fix = _TYPE_MESSAGES[kind]
        return loc, message, fix
    return loc, str(error.get("msg", "is invalid")), "correct the value"
