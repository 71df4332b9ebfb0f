"""Load campaign files: one file with every problem it has, or a folder where a broken file breaks alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from yaml.nodes import Node

from audience_sync.core.campaign.base import (
    FILE_FIELD,
    FILE_NAME_FIELD,
    Invalid,
    Loc,
    Problem,
    duration_problems,
    exclusion_problems,
    source_problems,
)
from audience_sync.core.campaign.destinations import destination_problems, normalised_account
from audience_sync.core.campaign.models import Campaign, campaign_model
from audience_sync.core.campaign.paths import campaigns_dir, display_path, resolve_path
from audience_sync.core.campaign.problems import convert_error, format_loc
from audience_sync.core.campaign.yaml_reader import line_of, read_yaml
from audience_sync.core.errors import CampaignError, CampaignErrors
from audience_sync.core.platforms import platforms

_STEM_RE = re.compile(r"[A-Za-z0-9_]+")


def _pre_checks(data: Mapping[Any, Any]) -> list[Problem]:
    """Cross-field rules checked on the raw data, so they are reported even when other fields fail."""
    problems: list[Problem] = []
    group = data.get("audience_group")
    if isinstance(group, Mapping):
        for at, message, fix in source_problems(
            group.get("list") is not None, group.get("sql") is not None, group.get("conn_id") is not None
        ):
            problems.append((("audience_group", *at), message, fix))
        problems += exclusion_problems(data.get("segment_name"), group.get("exclude_segments"))
    duration = data.get("duration")
    if isinstance(duration, Mapping):
        start, end = _as_date(duration.get("start")), _as_date(duration.get("end"))
        problems += [(("duration", *at), m, f) for at, m, f in duration_problems(start, end)]
    destinations = data.get("destinations")
    if isinstance(destinations, list):
        specs = platforms()
        keys: list[tuple[Any, Any] | None] = []
        for item in destinations:
            key = None
            name = item.get("platform") if isinstance(item, Mapping) else None
            spec = specs.get(name) if isinstance(name, str) else None
            if isinstance(item, Mapping) and spec is not None:
                try:  # each platform's own account rule: "123" and "act_123" are one Meta account
                    key = (spec.name, normalised_account(spec, item.get(spec.account_field)))
                except Invalid:
                    key = None
            keys.append(key)
        problems += destination_problems(keys)
    return problems


def _as_date(value: Any) -> date | None:
    """A plain date from a YAML value, or None when it is not one."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _file_name_problem(path: Path) -> CampaignError | None:
    """The file stem becomes the DAG id, so it must be ``[A-Za-z0-9_]+``."""
    if _STEM_RE.fullmatch(path.stem):
        return None
    fixed = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_") or "campaign"
    return CampaignError(
        display_path(path),
        FILE_NAME_FIELD,
        f"file name '{path.name}' cannot form a DAG id: only letters, digits and underscores are allowed",
        f"rename the file to '{fixed}{path.suffix}'",
    )


def _items_failed(error: Mapping[str, Any], data: Any) -> bool:
    """True for a 'too short' error on a non-empty input: its items failed and are reported already."""
    if error["type"] != "too_short":
        return False
    value = data
    for part in error["loc"]:
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return False
    return isinstance(value, (list, Mapping)) and len(value) > 0


def _build(data: Any, path: Path, node: Node | None, problems: list[CampaignError]) -> Campaign:
    """Validate ``data`` for the file ``path``; raise CampaignErrors with every problem found."""
    shown = display_path(path)
    name_problem = _file_name_problem(path)
    if name_problem is not None:
        problems.insert(0, name_problem)
    if data is None:
        problems.append(CampaignError(shown, FILE_FIELD, "file is empty", "write the campaign settings"))
        raise CampaignErrors(shown, problems)
    if not isinstance(data, Mapping):
        problems.append(
            CampaignError(
                shown,
                FILE_FIELD,
                f"top level must be a mapping of keys to values, not a {type(data).__name__}",
                "start the file with 'campaign: <name>' and the other keys, one per line, not indented",
            )
        )
        raise CampaignErrors(shown, problems)

    found: list[Problem] = list(_pre_checks(data))
    campaign: Campaign | None = None
    try:
        campaign = campaign_model().model_validate(data)
    except ValidationError as exc:
        found += [convert_error(e) for e in exc.errors() if not _items_failed(e, data)]

    seen: set[tuple[Loc, str]] = set()
    located: list[tuple[int | None, CampaignError]] = []
    for loc, message, fix in found:
        if (loc, message) in seen:
            continue
        seen.add((loc, message))
        line = line_of(node, loc)
        text = f"{message} (line {line})" if line is not None else message
        located.append((line, CampaignError(shown, format_loc(loc), text, fix)))
    located.sort(key=lambda item: item[0] if item[0] is not None else 10**9)
    problems += [error for _, error in located]

    if problems or campaign is None:
        raise CampaignErrors(shown, problems)
    campaign._path = path
    return campaign


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate one campaign file.

    A relative ``path`` is taken relative to the current directory. Raises
    :class:`~audience_sync.core.errors.CampaignErrors` listing every problem of the file.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        data, node = read_yaml(resolved)
    except CampaignError as exc:
        name_problem = _file_name_problem(resolved)
        problems = [exc] if name_problem is None else [name_problem, exc]
        raise CampaignErrors(exc.path, problems) from None
    return _build(data, resolved, node, [])


def campaign_from_mapping(data: Any, path: str | Path) -> Campaign:
    """Validate already-parsed campaign data as if read from ``path``; raise CampaignErrors."""
    return _build(data, Path(path).expanduser().resolve(), None, [])


def _campaign_files(folder: Path) -> list[Path]:
    """``*.yaml``/``*.yml`` files of ``folder`` (not recursive), sorted; ``_``/``.`` prefixes skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(("_", "."))
    )


def load_campaigns(
    folder: str | Path | None = None, *, strict: bool = False
) -> tuple[list[Campaign], dict[str, CampaignErrors]]:
    """Load every campaign file of ``folder`` (default :func:`campaigns_dir`).

    Returns ``(campaigns, broken)`` where ``broken`` maps each failing file (as shown in messages:
    relative to the project root when inside it) to its CampaignErrors. A broken file never stops the
    others. Two files with the same stem (``x.yaml`` and ``x.yml``) would make the same DAG id: the
    second one is reported as broken. ``strict=True`` raises the first file's CampaignErrors after
    loading everything; its message then lists every broken file and its problems.
    A relative ``folder`` is taken relative to the project root; a missing folder raises FileNotFoundError.
    """
    directory = campaigns_dir() if folder is None else resolve_path(folder)
    if not directory.is_dir():
        raise FileNotFoundError(f"campaign folder '{display_path(directory)}' does not exist")
    campaigns: list[Campaign] = []
    broken: dict[str, CampaignErrors] = {}
    by_dag_id: dict[str, Campaign] = {}
    for file in _campaign_files(directory):
        try:
            campaign = load_campaign(file)
        except CampaignErrors as exc:
            broken[exc.path] = exc
            continue
        other = by_dag_id.get(campaign.dag_id)
        if other is not None:
            shown = display_path(file)
            broken[shown] = CampaignErrors(
                shown,
                [
                    CampaignError(
                        shown,
                        FILE_NAME_FIELD,
                        f"DAG id '{campaign.dag_id}' is already used by '{other.path.name}'",
                        "rename one of the two files",
                    )
                ],
            )
            continue
        by_dag_id[campaign.dag_id] = campaign
        campaigns.append(campaign)
    if strict and broken:
        first = next(iter(broken.values()))
        error = CampaignErrors(first.path, first.errors)
        if len(broken) > 1:
            listing = "\n".join(str(e) for e in broken.values())
            error.args = (f"{len(broken)} broken campaign files in {display_path(directory)}:\n{listing}",)
        raise error
    return campaigns, broken
