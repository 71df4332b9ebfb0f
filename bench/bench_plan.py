"""Whole-process benchmark: ``audience-sync plan`` vs. facebook-business's ``format_params`` on one list.

Prints figures and the issue's targets; asserts nothing about speed. Usage (see ``bench/README.md``)::

    .venv/bin/python bench/bench_plan.py --members 200000
    .venv/bin/python bench/bench_plan.py --repeat 3 --out plan.json            # 1,000,000 members
    .venv/bin/python bench/bench_plan.py --members 10000000 --product-only     # P3: memory at 10M

Both sides run as their own processes on the same CSV list (5-key schema: email, phone, first name,
last name, country, plus a member key), alternately, ``--repeat`` times:

- **baseline**: ``baseline_format_params.py``: pandas reads the CSV in 10,000-row chunks and
  ``CustomAudience.format_params`` normalises and hashes each chunk.
- **product**: ``audience-sync plan <campaign> --json`` on a campaign whose ``list:`` group is the file
  and whose destination is the Meta sandbox. ``plan`` extracts (read, normalise, hash, stage) and plans
  against an empty state (a fresh ``AIRFLOW_HOME`` per run: a first sync), sending nothing.

Per process: wall time, CPU time (user + sys of the process and the descendants it waited for) and
peak RSS: the sum over the process tree, sampled every 50 ms with psutil, and the kernel's peak of the
largest single process. The sandbox runs in this process, so it is in neither side's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_sync import KEY, MemberFactory, code_revision

from audience_sync.sandbox import start_sandbox

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baseline_format_params.py"
#: the list's columns: the member key, then the 5-key schema (the baseline reads these names too)
COLUMNS = (KEY, "email", "mobile", "first_name", "last_name", "country")
#: bump when the generated rows change, so cached lists from an older generator are not reused
GENERATOR_VERSION = 2
P1_MIN_RATIO = 3.0
P3_MAX_MIB = 1536.0
SAMPLE_SECONDS = 0.05
ACCOUNT = "act_1234567890"
STARTUP_ROWS = 1000


# --------------------------------------------------------------------------------------------
# The member list (generated once per (members, seed), then reused)

_factory: MemberFactory | None = None


def _csv_chunk(bounds: tuple[int, int]) -> tuple[str, int]:
    """CSV text of members ``start..stop`` and how many are valid (runs in a pool worker)."""
    assert _factory is not None
    start, stop = bounds
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    valid = 0
    for i in range(start, stop):
        row, ok = _factory.member(i)
        valid += ok
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    return out.getvalue(), valid


def _init_worker(seed: int) -> None:
    global _factory
    _factory = MemberFactory(seed)


def _ranges(n: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, chunk_rows):
        yield start, min(n, start + chunk_rows)


def member_list(workdir: Path, n: int, seed: int, jobs: int, chunk_rows: int = 20_000) -> tuple[Path, dict]:
    """The CSV list of ``n`` members and its facts (``valid``); generated only when not cached.

    Chunks are generated in a process pool and written in order as they come, so memory stays bounded
    at any size; the file is renamed into place only when complete, so an interrupted run leaves no
    half list behind to be mistaken for a cached one.
    """
    stem = f"members_{n}_seed{seed}_gen{GENERATOR_VERSION}"
    path, meta_path = workdir / f"{stem}.csv", workdir / f"{stem}.json"
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        print(f"list: {n:,} members (cached, {path.stat().st_size / 2**20:,.0f} MiB)")
        return path, meta
    started = time.perf_counter()
    valid = 0
    partial = path.with_suffix(".csv.partial")
    ctx = multiprocessing.get_context("fork")  # workers inherit the imports; no re-import per worker
    with partial.open("w", encoding="utf-8", newline="") as fh, ctx.Pool(jobs, _init_worker, (seed,)) as pool:
        fh.write(",".join(COLUMNS) + "\n")
        for text, ok in pool.imap(_csv_chunk, _ranges(n, chunk_rows)):
            fh.write(text)
            valid += ok
    partial.replace(path)
    meta = {"members": n, "seed": seed, "valid": valid, "generator": GENERATOR_VERSION}
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    print(
        f"list: {n:,} members generated in {time.perf_counter() - started:,.1f} s "
        f"({jobs} processes, {path.stat().st_size / 2**20:,.0f} MiB)"
    )
    return path, meta


def write_campaign(folder: Path, stem: str, segment: str, list_path: Path) -> None:
    """A campaign with a ``list:`` group on the file and one Meta destination (segment: letters only)."""
    text = f"""\
campaign: bench plan {stem}
duration: {{start: 2026-01-01}}
schedule: "@daily"
timezone: UTC
segment_name: {segment}
audience_group:
  list: {json.dumps(str(list_path))}
  key: {KEY}
  identifiers:
    email: email
    phone: mobile
    first_name: first_name
    last_name: last_name
    country: country
  default_country: US
destinations:
  - platform: meta
    ad_account_id: "{ACCOUNT}"
    conn_id: meta_default
"""
    (folder / f"{stem}.yaml").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Measuring one process


@dataclass
class Measured:
    side: str
    rows: int
    wall_s: float
    cpu_s: float
    peak_tree_rss_mib: float
    peak_single_rss_mib: float
    max_processes: int
    returncode: int
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def _tree_rss(proc: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS over the tree, largest single RSS, processes) of ``proc`` and its descendants, now."""
    total = largest = count = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for p in members:
        try:
            rss = p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited between the listing and the read
        total += rss
        largest = max(largest, rss)
        count += 1
    return total, largest, count


def measure(side: str, cmd: Sequence[str], env: dict[str, str], log_dir: Path) -> tuple[Measured, str, str]:
    """Run ``cmd`` to completion; return its figures, stdout and stderr.

    The child is reaped with ``os.wait4``: its rusage covers the child plus every descendant it waited
    for (a process pool's workers), and its ``ru_maxrss`` is the largest single process's peak, exact.
    The tree sum can only be sampled (psutil, every ``SAMPLE_SECONDS``), so a shorter spike can be missed.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{side}.stdout", log_dir / f"{side}.stderr"
    peak_total = peak_single = peak_procs = 0
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        # its own session, so an interrupted run can stop the whole tree (pool workers too)
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            watched = psutil.Process(proc.pid)
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                total, largest, count = _tree_rss(watched)
                peak_total = max(peak_total, total)
                peak_single = max(peak_single, largest)
                peak_procs = max(peak_procs, count)
                time.sleep(SAMPLE_SECONDS)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:  # interrupted: do not leave the child or its workers running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    single = max(peak_single, usage.ru_maxrss * 1024)  # ru_maxrss is KiB on Linux
    measured = Measured(
        side=side,
        rows=0,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_tree_rss_mib=max(peak_total, single) / 2**20,
        peak_single_rss_mib=single / 2**20,
        max_processes=peak_procs,
        returncode=proc.returncode,
    )
    return measured, stdout, stderr


class BenchFailure(RuntimeError):
    """A side failed or produced the wrong count: the figures would be meaningless."""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_baseline(list_path: Path, n: int, log_dir: Path) -> Measured:
    m, stdout, stderr = measure(
        "baseline", [sys.executable, str(BASELINE), str(list_path)], dict(os.environ), log_dir
    )
    if m.returncode != 0:
        raise BenchFailure(f"baseline exited {m.returncode}:\n{_tail(stderr)}")
    counted = int(stdout.strip().splitlines()[-1])
    if counted != n:
        raise BenchFailure(f"baseline counted {counted:,} rows, the list has {n:,}")
    m.rows = counted
    return m


@dataclass
class Product:
    """What the product's runs share: the CLI, the campaigns folder and the sandbox connection."""

    cli: Path
    campaigns: Path
    scratch: Path
    conn: str
    runs: int = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # a fresh AIRFLOW_HOME per run: the SQLite state starts empty, so every plan is a first sync
        self.runs += 1
        home = self.scratch / f"airflow_home_{self.runs}"
        shutil.rmtree(home, ignore_errors=True)
        env.pop("AIRFLOW_CONN_AUDIENCE_SYNC_DB", None)  # the state must be that fresh SQLite file
        env.update(
            AIRFLOW_HOME=str(home),
            AUDIENCE_SYNC_CAMPAIGNS_DIR=str(self.campaigns),
            AIRFLOW_CONN_META_DEFAULT=self.conn,
        )
        return env


def run_product(product: Product, stem: str, n: int, valid: int, log_dir: Path) -> Measured:
    cmd = [str(product.cli), "plan", stem, "--json"]
    m, stdout, stderr = measure("product", cmd, product.env(), log_dir)
    if m.returncode != 0:
        raise BenchFailure(f"audience-sync plan exited {m.returncode}:\n{_tail(stderr)}")
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise BenchFailure(f"audience-sync plan printed no JSON ({exc}):\n{_tail(stdout)}") from exc
    group = result["group"]
    (plan,) = result["destinations"]
    checks = {
        "group rows == list rows": (group["rows"], n),
        "group valid == generator's valid": (group["valid"], valid),
        "plan group == valid": (plan["group"], valid),
        "plan adds == valid (first sync)": (plan["adds"], valid),
        "plan removes == 0": (plan["removes"], 0),
    }
    wrong = {k: v for k, v in checks.items() if v[0] != v[1]}
    if wrong or not 0 < valid <= n:
        shown = "\n".join(f"  {k}: got {g}, expected {w}" for k, (g, w) in wrong.items())
        raise BenchFailure(f"the plan does not add up (valid {valid} of {n}):\n{shown}")
    m.rows = group["rows"]
    m.facts = {
        "valid": group["valid"],
        "invalid": group["invalid"],
        "adds": plan["adds"],
        "audience": plan["audience"]["action"],
        "field_errors": group.get("field_errors"),
    }
    return m


# --------------------------------------------------------------------------------------------
# Report


def median_of(runs: list[Measured]) -> dict[str, float]:
    keys = ("wall_s", "cpu_s", "peak_tree_rss_mib", "peak_single_rss_mib")
    out = {k: statistics.median(getattr(r, k) for r in runs) for k in keys}
    out["rows"] = runs[0].rows
    out["rows_per_s"] = out["rows"] / out["wall_s"] if out["wall_s"] else 0.0
    out["max_processes"] = max(r.max_processes for r in runs)
    return out


def print_table(title: str, sides: dict[str, dict[str, float]]) -> None:
    print(f"\n== {title}")
    names = list(sides)
    print(f"   {'':<24}" + "".join(f"{name:>16}" for name in names))
    rows = (
        ("rows", "rows", "{:,.0f}"),
        ("wall s", "wall_s", "{:,.2f}"),
        ("rows/s", "rows_per_s", "{:,.0f}"),
        ("CPU s (user+sys)", "cpu_s", "{:,.2f}"),
        ("peak RSS MiB (tree)", "peak_tree_rss_mib", "{:,.0f}"),
        ("peak RSS MiB (1 proc)", "peak_single_rss_mib", "{:,.0f}"),
        ("processes (max seen)", "max_processes", "{:,.0f}"),
    )
    for label, key, fmt in rows:
        print(f"   {label:<24}" + "".join(f"{fmt.format(sides[s][key]):>16}" for s in names))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000, help="members in the list (1,000,000)")
    parser.add_argument("--repeat", type=int, default=1, help="baseline/product pairs, alternating (1)")
    parser.add_argument("--product-only", action="store_true", help="skip the baseline (the 10M P3 run)")
    parser.add_argument(
        "--startup-rows",
        type=int,
        default=STARTUP_ROWS,
        help=f"also time both sides on a list this small, for their fixed cost ({STARTUP_ROWS:,}; 0: skip)",
    )
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "audience_sync_bench_plan"),
        help="where generated lists are cached (default: a folder in the system temp dir)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating the list")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.members < 1 or args.repeat < 1 or args.startup_rows < 0:
        parser.error("--members and --repeat must be >= 1, --startup-rows >= 0")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_plan: {args.members:,} members, repeat {args.repeat}, seed {args.seed}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, code {code_revision()}"
    )
    print(
        "measured: whole processes (interpreter start and imports included); "
        "the Meta sandbox runs in this process, outside both sides' figures"
    )
    list_path, meta = member_list(workdir, args.members, args.seed, args.jobs)
    small: tuple[Path, dict] | None = None
    if args.startup_rows:
        small = member_list(workdir, args.startup_rows, args.seed, 1)

    scratch = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    token = secrets.token_urlsafe(24)  # shared by the sandbox and the connection only
    srv = start_sandbox(port=0, access_token=token)
    try:
        campaigns = scratch / "campaigns"
        campaigns.mkdir()
        stem = f"bench_plan_{args.members}"
        write_campaign(campaigns, stem, "bench_plan_list", list_path)
        if small is not None:
            write_campaign(campaigns, f"bench_plan_{args.startup_rows}", "bench_plan_startup", small[0])
        product = Product(
            cli=Path(sys.executable).parent / "audience-sync",
            campaigns=campaigns,
            scratch=scratch,
            conn=json.dumps({"conn_type": "generic", "host": srv.url, "password": token}),
        )
        figures = _run(args, product, stem, list_path, meta, small, scratch / "logs")
    except BenchFailure as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        srv.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nfigures written to {args.out}")
    return 0


def _run(
    args: argparse.Namespace,
    product: Product,
    stem: str,
    list_path: Path,
    meta: dict,
    small: tuple[Path, dict] | None,
    logs: Path,
) -> dict[str, Any]:
    n, valid = args.members, int(meta["valid"])
    runs: dict[str, list[Measured]] = {"baseline": [], "product": []}
    for k in range(args.repeat):
        if not args.product_only:
            b = run_baseline(list_path, n, logs)
            runs["baseline"].append(b)
            print(
                f"   run {k + 1} baseline: {b.wall_s:,.2f} s wall, {b.cpu_s:,.2f} s CPU, {b.peak_tree_rss_mib:,.0f} MiB"
            )
        p = run_product(product, stem, n, valid, logs)
        runs["product"].append(p)
        print(
            f"   run {k + 1} product:  {p.wall_s:,.2f} s wall, {p.cpu_s:,.2f} s CPU, {p.peak_tree_rss_mib:,.0f} MiB "
            f"(tree of up to {p.max_processes} processes; plan: {p.facts['adds']:,} adds of {p.facts['valid']:,} valid)"
        )
    sides = {side: median_of(r) for side, r in runs.items() if r}

    startup: dict[str, dict[str, float]] = {}
    if small is not None:
        s_n, s_valid = args.startup_rows, int(small[1]["valid"])
        if not args.product_only:
            startup["baseline"] = median_of([run_baseline(small[0], s_n, logs)])
        startup["product"] = median_of([run_product(product, f"bench_plan_{s_n}", s_n, s_valid, logs)])

    title = f"{n:,} members, median of {args.repeat} run(s) per side"
    if args.product_only:
        title += " (product only: `plan` = extract + plan, nothing sent)"
    print_table(title, sides)
    if startup:
        print_table(f"fixed cost: the same on a {args.startup_rows:,}-row list", startup)

    prod = sides["product"]
    verdict: dict[str, Any] = {}
    print("\n== targets")
    if "baseline" in sides:
        base = sides["baseline"]
        ratio = base["wall_s"] / prod["wall_s"]
        verdict["ratio"] = ratio
        verdict["P1"] = ratio >= P1_MIN_RATIO
        print(
            f"   P1 baseline wall / product wall = {base['wall_s']:,.2f} / {prod['wall_s']:,.2f} = {ratio:,.2f}x "
            f"(target >= {P1_MIN_RATIO:g}x): {'MET' if verdict['P1'] else 'NOT MET'}"
        )
        print(f"      CPU ratio baseline / product = {base['cpu_s'] / prod['cpu_s']:,.2f}x")
        if startup.get("baseline") and startup.get("product"):
            b_var = base["wall_s"] - startup["baseline"]["wall_s"]
            p_var = prod["wall_s"] - startup["product"]["wall_s"]
            share = startup["product"]["wall_s"] / prod["wall_s"]
            print(
                f"      product fixed cost {startup['product']['wall_s']:,.2f} s = {share:.0%} of its wall; "
                f"baseline's {startup['baseline']['wall_s']:,.2f} s"
            )
            if b_var > 0 and p_var > 0:  # on a small list the noise can exceed the variable part
                verdict["ratio_without_fixed_cost"] = b_var / p_var
                print(
                    f"      without either side's fixed cost: {b_var:,.2f} / {p_var:,.2f} = {b_var / p_var:,.2f}x "
                    "(for reading only: P1 counts whole processes)"
                )
    elif startup.get("product"):
        share = startup["product"]["wall_s"] / prod["wall_s"]
        print(f"   product fixed cost {startup['product']['wall_s']:,.2f} s = {share:.0%} of its wall")
    verdict["P3"] = prod["peak_tree_rss_mib"] <= P3_MAX_MIB
    print(
        f"   P3 product peak RSS (tree sum) {prod['peak_tree_rss_mib']:,.0f} MiB at {n:,} members "
        f"(target <= {P3_MAX_MIB:,.0f} MiB at 10,000,000): {'within' if verdict['P3'] else 'OVER'}"
        + ("" if n == 10_000_000 else " -- P3 is defined at 10M; run --members 10000000 --product-only")
    )
    return {
        "args": vars(args),
        "code": code_revision(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "valid": meta["valid"],
        "medians": sides,
        "startup": startup,
        "runs": {side: [asdict(r) for r in rs] for side, rs in runs.items()},
        "targets": verdict,
    }


if __name__ == "__main__":
    sys.exit(main())
