"""Run every benchmark, print one table, write JSON to bench/results/<timestamp>.json.

Run: .venv/bin/python -m bench.run_all [--opens 8] [--concurrent 5,10] [--startup-runs 7]
     [--quick]   (3 opens, N=5 only, 3 start-ups: a smoke run)

Core Lightning figures printed beside ours are quoted from the text of issue 8, not measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench import bench_open, bench_startup
from bench.benchlib import CLN_REFERENCE, ROOT

RESULTS = ROOT / "bench" / "results"


def _quiet(fn, argv):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(argv)


def _micro() -> dict:
    """The existing codec and transport scripts, their own output kept as text."""
    out = {}
    for name in ("bench_wire", "bench_transport"):
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", "0.5"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out[name] = proc.stdout if proc.returncode == 0 else f"FAILED: {proc.stderr[-2000:]}"
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f} ms"


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


def table(res: dict) -> str:
    rows: list[tuple[str, str, str, str, str]] = []  # figure, min, median, p95, CLN (issue)

    def timing(name: str, s: dict, ref: float | None = None) -> None:
        if not s or not s.get("n"):
            rows.append((name, "-", "-", "-", _ms(ref) if ref else ""))
            return
        rows.append(
            (f"{name} (n={s['n']})", _ms(s["min"]), _ms(s["median"]), _ms(s["p95"]),
             _ms(ref) if ref else "")
        )  # fmt: skip

    seq = res["open"]["sequential"]
    timing("fundchannel RPC, 2 nodes", seq["fundchannel_s"], CLN_REFERENCE["fundchannel_s"])
    timing(f"mine mindepth={seq['mindepth']} -> both NORMAL", seq["lockin_s"])
    for c in res["open"]["concurrent"]:
        ref = CLN_REFERENCE["concurrent_10_total_s"] if c["n"] == 10 else None
        ok = f"{c['succeeded']}/{c['n']} ok"
        rows.append(
            (f"{c['n']} concurrent inbound opens: total", "", _ms(c["total_s"]),
             f"{c['opens_per_s']:.1f} opens/s, {ok}", _ms(ref) if ref else "")
        )  # fmt: skip
        before, after = c["hub_memory_before"]["total"], c["hub_memory_after"]["total"]
        rows.append(
            ("  hub RSS / PSS before -> after", "",
             f"{_mb(before['rss_kb'])} -> {_mb(after['rss_kb'])}",
             f"{_mb(before['pss_kb'])} -> {_mb(after['pss_kb'])}", "")
        )  # fmt: skip
    st = res["startup"]
    timing("start -> getinfo, empty db", st["empty_db_s"])
    timing("start -> getinfo, restart, no channels", st["restart_s"])
    timing(
        f"start -> getinfo, {seq['restart_stored_channels']} stored channels",
        seq["restart_with_channels_s"],
    )
    lines = [f"{'figure':<46} {'min':>9} {'median':>16} {'p95':>26}  CLN (issue 8)"]
    lines += [f"{a:<46} {b:>9} {c:>16} {d:>26}  {e}" for a, b, c, d, e in rows]

    lines.append("")
    lines.append(f"{'memory of l1 (PSS / USS)':<46} {'idle':>20} {'5 channels':>20}  CLN (issue 8)")
    idle = seq["memory_idle"]["l1"]
    five = (seq["memory_5_channels"] or {}).get("l1")
    names = [p["name"] for p in idle["processes"]]
    for name in names:
        i = next(p for p in idle["processes"] if p["name"] == name)
        f = next((p for p in (five or {}).get("processes", []) if p["name"] == name), None)
        lines.append(
            f"{'  ' + name:<46} {_mb(i['pss_kb']) + ' / ' + _mb(i['uss_kb']):>20} "
            f"{(_mb(f['pss_kb']) + ' / ' + _mb(f['uss_kb'])) if f else '-':>20}"
        )
    od = seq["openingd_in_flight"]
    if od:
        lines.append(
            f"{'  openingd (caught during an open)':<46} "
            f"{_mb(od['pss_kb']) + ' / ' + _mb(od['uss_kb']):>20}"
        )
    tf = five["total"] if five else None
    lines.append(
        f"{'  whole node (sum)':<46} "
        f"{_mb(idle['total']['pss_kb']) + ' / ' + _mb(idle['total']['uss_kb']):>20} "
        f"{(_mb(tf['pss_kb']) + ' / ' + _mb(tf['uss_kb'])) if tf else '-':>20}  "
        f"{CLN_REFERENCE['pss_5_channels_mb']:.0f} MB PSS"
    )
    lines.append("")
    lines.append(
        "CLN column: Core Lightning figures quoted from the text of issue 8, NOT measured here."
    )
    lines.append(f"chain backend: {seq['chain']}; machine: {res['machine']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=8)
    parser.add_argument("--concurrent", default="5,10")
    parser.add_argument("--startup-runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-micro", action="store_true", help="skip bench_wire/transport")
    args = parser.parse_args(argv)
    if args.quick:
        args.opens, args.concurrent, args.startup_runs = 5, "5", 3
    started = time.time()
    res: dict = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, "
        f"Python {platform.python_version()}",
        "cln_reference_from_issue_text": CLN_REFERENCE,
    }
    print("open latency / lock-in / memory / concurrent opens ...", file=sys.stderr)
    res["open"] = _quiet(
        bench_open.main, ["--opens", str(args.opens), "--concurrent", args.concurrent]
    )
    print("start-up ...", file=sys.stderr)
    res["startup"] = _quiet(bench_startup.main, ["--runs", str(args.startup_runs)])
    if not args.no_micro:
        print("wire / transport ...", file=sys.stderr)
        res["micro"] = _micro()
    res["elapsed_s"] = time.time() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(table(res))
    for name, text in res.get("micro", {}).items():
        print(f"\n{name}:\n{text.rstrip()}")
    print(f"\nJSON: {path.relative_to(ROOT)}")
    return res


if __name__ == "__main__":
    main()
