"""A one-destination campaign file for a platform's unit tests: the campaign around it stays the same."""

from __future__ import annotations

import textwrap
from pathlib import Path

LIST_FILE = "tests/fixtures/campaigns/data/existing_list.csv"


def one_destination(
    folder: Path, platform: str, destination: str, identifiers: str = "{email: email}"
) -> Path:
    """Write ``folder/campaign.yaml`` sending a list group to one ``platform`` destination whose fields
    (after ``platform:``) are ``destination``; return its path."""
    path = folder / "campaign.yaml"
    campaign = f"""\
campaign: Loyal customers
duration: {{start: 2026-08-01}}
schedule: "@daily"
segment_name: loyal_customers
audience_group:
  list: {LIST_FILE}
  key: customer_id
  identifiers: {identifiers}
destinations:
  - platform: {platform}
"""
    path.write_text(campaign + textwrap.indent(textwrap.dedent(destination), "    "), encoding="utf-8")
    return path
