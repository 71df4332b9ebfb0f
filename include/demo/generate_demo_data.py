"""Write the synthetic demo CRM (SQLite, table ``customers``) that the demo campaign reads.

    python include/demo/generate_demo_data.py [--rows 5000] [--seed 7] [--out include/demo/crm.db] [--csv FILE]

The generator itself lives in ``plugins/audience_sync/demo_data.py`` (importable by Airflow and the tests);
this script is the entry point for people who want the data without running the demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins"))

from audience_sync.demo_data import write_demo_csv, write_demo_db  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "include" / "demo" / "crm.db"))
    p.add_argument("--csv", default=None, help="also write the same rows as CSV (for `list:` campaigns)")
    args = p.parse_args()
    print(write_demo_db(args.out, n=args.rows, seed=args.seed))
    if args.csv:
        print(write_demo_csv(args.csv, n=args.rows, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
