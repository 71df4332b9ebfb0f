"""Baseline for ``bench_plan.py``: hash a member list the way facebook-business's SDK does.

Reads the CSV in batches of 10,000 rows, builds ``[[email, phone, first, last, country], ...]`` per
batch and calls ``CustomAudience.format_params`` (the SDK's own normalise-and-hash step, ``is_raw=True``)
on it. Prints the number of rows hashed. Run as its own process so its wall time, CPU and memory can
be compared with ``audience-sync plan`` on the same file::

    .venv/bin/python bench/baseline_format_params.py members.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd
from facebook_business.adobjects.customaudience import CustomAudience

SCHEMA = ["EMAIL", "PHONE", "FN", "LN", "COUNTRY"]
#: the bench list's columns, in SCHEMA order
COLUMNS = ["email", "mobile", "first_name", "last_name", "country"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="CSV member list (bench_plan.py's columns)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per format_params call (10,000)")
    args = parser.parse_args(argv)
    rows = 0
    hashed = 0
    # every column is read, as the product reads them (no usecols): the same parsing work on both sides
    for frame in pd.read_csv(args.file, dtype=str, keep_default_na=False, chunksize=args.batch):
        users = frame[COLUMNS].values.tolist()
        params = CustomAudience.format_params(SCHEMA, users, is_raw=True)
        # count what the SDK returned, so the work cannot be skipped without the count noticing
        hashed += len(params["payload"]["data"])
        rows += len(users)
    if hashed != rows:
        print(f"format_params returned {hashed} users for {rows} rows", file=sys.stderr)
        return 1
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
