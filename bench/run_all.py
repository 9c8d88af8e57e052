"""Run every benchmark, print one table, write JSON to bench/results/<timestamp>.json.

Run: .venv/bin/python -m bench.run_all [--opens 8] [--concurrent 10,25,50,100]
     [--multifund 10,25] [--peers 100,500] [--channels 1000] [--startup-runs 7]
     [--quick]   (5 opens, N=5 only, multifund 5, 100 idle peers, 3 start-ups, 200 channels)

Core Lightning figures printed beside ours are quoted from the text of issue 8. With
$CLN_LIGHTNINGD naming a Core Lightning lightningd, the open, concurrent-open, idle-peer and
start-up benchmarks also run on it (same chain kind, same options: CLN's names) and a second
table gives both and their ratio. A real CLN needs Bitcoin Core (its bcli plugin runs
bitcoin-cli): the bcoin fallback will not do.
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

from bench import bench_open, bench_peers, bench_startup
from bench.benchlib import CLN_REFERENCE, DAEMON_FAILURES, ROOT, git_state

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
    st = res["startup"]
    timing("start -> getinfo, empty db", st["empty_db_s"])
    timing("start -> getinfo, restart, no channels", st["restart_s"])
    timing(
        f"start -> getinfo, {seq['restart_stored_channels']} stored channels",
        seq["restart_with_channels_s"],
    )
    sc = st.get("stored_channels")
    if sc:
        timing(
            f"start -> getinfo, {sc['written']['stored']} stored channels (SYNTHETIC rows)",
            sc["start_s"],
        )
    lines = [f"{'figure':<60} {'min':>9} {'median':>9} {'p95':>9}  CLN (issue 8)"]
    lines += [f"{a:<60} {b:>9} {c:>9} {d:>9}  {e}" for a, b, c, d, e in rows]
    if sc and (sc["failure"] or any(ch.get("log") for ch in sc["checks"])):
        lines.append(f"  stored channels: failure={sc['failure']} log={sc['checks'][-1]['log']}")
    if sc and sc["checks"] and "states" in sc["checks"][-1]:
        last = sc["checks"][-1]
        lines.append(
            f"  (synthetic rows, not on chain) listed {last['listed']} {last['states']}, "
            f"listpeerchannels {_ms(last['listpeerchannels_s'])}, whole node "
            f"PSS/USS {_mb(last['memory']['pss_kb'])} / {_mb(last['memory']['uss_kb'])}"
        )
    lines += ["", *concurrent_table(res["open"]), "", *multifund_table(res["open"])]
    if res.get("peers"):
        lines += ["", *peers_table(res["peers"])]

    lines.append("")
    lines.append(f"{'memory of l1 (PSS / USS)':<46} {'idle':>20} {'5 channels':>20}  CLN (issue 8)")
    idle = seq["memory_idle"]["l1"]
    five = (seq["memory_5_channels"] or {}).get("l1")
    for i in idle["processes"]:
        name = i["name"]
        f = next((p for p in (five or {}).get("processes", []) if p["name"] == name), None)
        lines.append(
            f"{'  ' + name:<46} {_mb(i['pss_kb']) + ' / ' + _mb(i['uss_kb']):>20} "
            f"{(_mb(f['pss_kb']) + ' / ' + _mb(f['uss_kb'])) if f else '-':>20}"
        )
    od = seq["openingd_in_flight"]
    if od:
        lines.append(
            f"{'  ' + od['name'] + ' (caught during an open)':<46} "
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


def _mem3(m: dict | None) -> str:
    """RSS / PSS / USS of a node_memory() total."""
    if not m:
        return "-"
    t = m["total"]
    return f"{t['rss_kb'] / 1024:.1f}/{t['pss_kb'] / 1024:.1f}/{t['uss_kb'] / 1024:.1f}"


def _load(r: dict) -> str:
    """1-min load average when the round started: other work on the machine shows here."""
    la = r.get("loadavg_at_start")
    return f"{la[0]:.1f}" if la else "-"


def concurrent_table(op: dict) -> list[str]:
    """Per N: time, rate, successes, hub memory at three points, USS growth per channel."""
    lines = [
        "N concurrent inbound opens (each spoke its own lightningd; hub RSS/PSS/USS in MB)",
        f"{'N':>4} {'total':>9} {'opens/s':>8} {'ok':>8} {'lock-in':>8} {'hub before':>16} "
        f"{'N connected':>16} {'N channels':>16} {'USS/chan':>9} {'load':>5}  CLN (issue 8)",
    ]
    for c in op.get("concurrent", []):
        if "total_s" not in c:
            lines.append(f"{c['n']:>4} FAILED: {c.get('failure')}")
            continue
        ref = CLN_REFERENCE["concurrent_10_total_s"] if c["n"] == 10 else None
        lines.append(
            f"{c['n']:>4} {_ms(c['total_s']):>9} {c['opens_per_s']:>8.1f} "
            f"{str(c['succeeded']) + '/' + str(c['n']):>8} {_ms(c.get('lockin_all_s')):>8} "
            f"{_mem3(c['hub_memory_before']):>16} {_mem3(c['hub_memory_connected']):>16} "
            f"{_mem3(c.get('hub_memory_channels')):>16} "
            f"{c['hub_uss_growth_per_channel_kb']:>6.0f} kB {_load(c):>5}  "
            f"{_ms(ref) if ref else ''}"
        )
        if c.get("errors"):
            lines.append(f"     errors: {c['errors'][:3]}")
    if op.get("spokes"):
        lines.append(
            f"  ({op['spokes']} spokes started in {op['start_spokes_s']:.1f} s, all funded by"
            f" one tx + 1 block in {op['fund_all_s']:.1f} s; stop failures:"
            f" {len(op.get('stop_failures', []))})"
        )
    return lines


def multifund_table(op: dict) -> list[str]:
    lines = ["multifundchannel: one node opens to N peers in one call (one funding tx)"]
    for m in op.get("multifundchannel", []):
        if "total_s" not in m:
            lines.append(f"{m['n']:>4} FAILED: {m.get('failure')}")
            continue
        lines.append(
            f"{m['n']:>4} total {_ms(m['total_s'])}, {m['opens_per_s']:.1f} opens/s, "
            f"{m['succeeded']}/{m['n']} ok, failed {len(m['failed'])}, "
            f"lock-in {_ms(m.get('lockin_all_s'))}, load {_load(m)}"
        )
    return lines


def peers_table(pe: dict) -> list[str]:
    """Idle raw BOLT #8 peers (no channels): memory, growth per peer, lightningd's fds."""
    lines = [
        "idle connected peers (raw BOLT #8 + init from the bench process, no channels)",
        f"{'peers':>6} {'RSS/PSS/USS MB':>18} {'per peer RSS/PSS/USS kB':>26} "
        f"{'marginal USS kB':>16} {'lightningd fds':>15}",
        f"{0:>6} {_mem3(pe['base']['memory']):>18} {'':>26} {'':>16} "
        f"{pe['base']['lightningd_fds']:>15}",
    ]
    prev = pe["base"]
    for s in pe["with_peers"]:
        g = s["per_peer_kb"]
        marginal = (s["memory"]["total"]["uss_kb"] - prev["memory"]["total"]["uss_kb"]) / max(
            1, s["peers"] - prev["peers"]
        )
        lines.append(
            f"{s['peers']:>6} {_mem3(s['memory']):>18} "
            f"{g['rss_kb']:>8.1f}/{g['pss_kb']:.1f}/{g['uss_kb']:.1f} {marginal:>16.1f} "
            f"{s['lightningd_fds']:>15}"
        )
        prev = s
    a = pe["after_disconnect"]
    lines.append(
        f"{'after':>6} {_mem3(a['memory']):>18} {'(all disconnected)':>26} {'':>16} "
        f"{a['lightningd_fds']:>15}"
    )
    return lines


def daemon_dirty(git: dict) -> str:
    """Uncommitted files outside bench/: the daemon measured is not exactly the commit."""
    names = [ln.split()[-1] for ln in git["dirty"].splitlines() if ln.strip()]
    return ", ".join(n for n in names if not n.startswith("bench/"))


def cln_note() -> str:
    path = os.environ.get("CLN_LIGHTNINGD")
    if not path:
        return (
            "CLN: CLN_LIGHTNINGD is unset: measured CLN columns SKIPPED "
            "(the CLN column only quotes issue 8)."
        )
    return f"CLN: CLN_LIGHTNINGD={path}: measured beside ours (second table)."


def _median(d: dict | None) -> float | None:
    return d.get("median") if d else None


def _pss(mem: dict | None) -> int | None:
    return mem["total"]["pss_kb"] if mem else None


def comparable(res: dict) -> list[tuple[str, float | None, str]]:
    """(figure, value, unit) for the figures measured on both daemons."""
    seq = res["open"]["sequential"] or {}
    out: list[tuple[str, float | None, str]] = [
        ("fundchannel RPC median", _median(seq.get("fundchannel_s")), "s"),
        ("mine -> both NORMAL median", _median(seq.get("lockin_s")), "s"),
        ("node PSS idle (l1)", _pss((seq.get("memory_idle") or {}).get("l1")), "kB"),
        ("node PSS 5 channels (l1)", _pss((seq.get("memory_5_channels") or {}).get("l1")), "kB"),
        ("openingd PSS", (seq.get("openingd_in_flight") or {}).get("pss_kb"), "kB"),
        ("start -> getinfo, empty db", _median(res["startup"].get("empty_db_s")), "s"),
    ]
    for c in res["open"].get("concurrent", []):
        out.append((f"{c['n']} concurrent opens, total", c.get("total_s"), "s"))
        uss = c.get("hub_uss_growth_per_channel_kb")
        out.append((f"{c['n']} concurrent, hub USS/chan", uss, "kB"))
    for s in (res.get("peers") or {}).get("with_peers", []):
        out.append((f"{s['peers']} idle peers, USS/peer", s["per_peer_kb"]["uss_kb"], "kB"))
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return _ms(value)
    return f"{value / 1024:.1f} MB" if value > 1024 else f"{value:.0f} kB"


def cln_table(res: dict) -> list[str]:
    """Ours beside the measured CLN, with ours / CLN (below 1: we are faster or smaller)."""
    ours = comparable(res)
    theirs = {figure: value for figure, value, _ in comparable(res["cln_measured"])}
    lines = [f"{'measured on both':<40} {'ours':>10} {'CLN':>10} {'ours/CLN':>9}"]
    for figure, value, unit in ours:
        cln = theirs.get(figure)
        ratio = f"{value / cln:.2f}" if value and cln else "-"
        lines.append(f"{figure:<40} {_fmt(value, unit):>10} {_fmt(cln, unit):>10} {ratio:>9}")
    return lines


def measure_cln(path: str, args: argparse.Namespace) -> dict:
    """The same runs (minus the synthetic 1,000 channels, which use our schema) on CLN."""
    cln = ["--lightningd", path]
    open_argv = ["--opens", str(args.opens), "--concurrent", args.concurrent, "--multifund", ""]
    return {
        "open": _quiet(bench_open.main, [*open_argv, *cln]),
        "peers": _quiet(bench_peers.main, ["--peers", args.peers, *cln]) if args.peers else None,
        "startup": _quiet(bench_startup.main, ["--runs", str(args.startup_runs), *cln]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=8)
    parser.add_argument("--concurrent", default="10,25,50,100")
    parser.add_argument("--multifund", default="10,25")
    parser.add_argument("--peers", default="100,500")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--startup-runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-micro", action="store_true", help="skip bench_wire/transport")
    args = parser.parse_args(argv)
    if args.quick:
        args.opens, args.concurrent, args.startup_runs = 5, "5", 3
        args.multifund, args.peers, args.channels = "5", "100", 200
    started = time.time()
    res: dict = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, "
        f"Python {platform.python_version()}",
        "cln_reference_from_issue_text": CLN_REFERENCE,
        "git_at_start": git_state(),
        "cln": cln_note(),
    }
    print(res["cln"], file=sys.stderr)
    print("open latency / lock-in / memory / concurrent opens ...", file=sys.stderr)
    open_argv = ["--opens", str(args.opens), "--concurrent", args.concurrent]
    res["open"] = _quiet(bench_open.main, [*open_argv, "--multifund", args.multifund])
    print("idle peers ...", file=sys.stderr)
    res["peers"] = _quiet(bench_peers.main, ["--peers", args.peers]) if args.peers else None
    print("start-up ...", file=sys.stderr)
    res["startup"] = _quiet(
        bench_startup.main, ["--runs", str(args.startup_runs), "--channels", str(args.channels)]
    )
    if os.environ.get("CLN_LIGHTNINGD"):
        print("the same on CLN ...", file=sys.stderr)
        res["cln_measured"] = measure_cln(os.environ["CLN_LIGHTNINGD"], args)
    if not args.no_micro:
        print("wire / transport ...", file=sys.stderr)
        res["micro"] = _micro()
    res["elapsed_s"] = time.time() - started
    res["git_at_end"] = git_state()
    res["daemon_failures"] = DAEMON_FAILURES
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(res["cln"])
    if "cln_measured" in res:
        print("\n".join(cln_table(res)))
    for failure in res["daemon_failures"]:
        print(f"DAEMON FAILURE: {failure[:600]}")
    print(
        f"git {res['git_at_start']['commit']}; daemon files uncommitted at start: "
        f"{daemon_dirty(res['git_at_start']) or 'none'}; elapsed {res['elapsed_s']:.0f} s"
    )
    for name, text in res.get("micro", {}).items():
        print(f"\n{name}:\n{text.rstrip()}")
    print(f"\nJSON: {path.relative_to(ROOT)}")
    return res


if __name__ == "__main__":
    main()
