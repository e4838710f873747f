#!/usr/bin/env python3
"""Helpers of bench/run.sh (standard library only).

  report.py latency PREFIX        p50 and p99 latency (ms) of pgbench's per-transaction logs
                                  PREFIX.* (`pgbench -l --log-prefix PREFIX`); prints
                                  "p50_ms p99_ms transactions failed"
  report.py markdown RESULTS META  the Markdown report: RESULTS is the TSV run.sh appends to
                                  (workload clients run tps p50_ms p99_ms transactions failed rc [wal_bytes]),
                                  META a file of "key<TAB>value" lines about the run
  report.py build SOFILE          "debug" or "release": whether pg_mec.so carries DWARF debug info
  report.py wrk LINE              parse the "MECGW key=value ..." line of bench/gateway.lua's done();
                                  prints "rps p50_ms p99_ms requests bad detail"
  report.py gateway RESULTS META  the Markdown report of bench/gateway.sh: RESULTS is its TSV
                                  (side function clients rps p50_ms p99_ms requests bad detail)
  report.py scale RESULTS SOAK META  the Markdown report of bench/scale.sh: RESULTS its runs (stage
                                  accounts ledger_rows workload clients tps p50_ms p99_ms transactions
                                  failed cache_hit_pct), SOAK its samples
"""

from __future__ import annotations

import glob
import math
import statistics
import sys
from collections import defaultdict

# name -> (label in the report, what it runs)
WORKLOADS: dict[str, tuple[str, str]] = {
    "update_1stmt": ("update_1stmt", "one autocommit `UPDATE` of a random pgbench account (the floor)"),
    "naive_meter": ("naive_meter", "hand-written PL/pgSQL meter, random account of 10 000"),
    "mec_meter": ("**pg_mec meter**", "`mec.meter_consumption`, random account of 10 000"),
    "simple_update": ("simple-update `-N`", "pgbench built-in, five round trips (context)"),
    "select_only": ("select-only `-S`", "pgbench built-in, one primary-key `SELECT`"),
    "naive_check": ("naive_check", "hand-written PL/pgSQL check, random account"),
    "mec_check": ("**pg_mec check**", "`mec.check_entitlement`, random account"),
    "naive_meter_hot": ("naive_meter, hot", "hand-written meter, every client on account 1"),
    "mec_meter_hot": ("**pg_mec meter, hot**", "`mec.meter_consumption`, every client on account 1"),
    "naive_check_hot": ("naive_check, hot", "hand-written check, every client on account 1"),
    "mec_check_hot": ("**pg_mec check, hot**", "`mec.check_entitlement`, every client on account 1"),
    "mec_check_churn": ("**pg_mec check, sign-ups**",
                        "`mec.check_entitlement`, random account, while new accounts are provisioned "
                        "(`--churn` per second)"),
    "naive_check_churn": ("naive_check, sign-ups",
                          "hand-written check while new accounts are provisioned (the same sign-ups)"),
    "mec_check_rate": ("**pg_mec check, rate window**", "`mec.check_entitlement` of a 60 s rate window, random account"),
    "mec_meter_rate": ("**pg_mec meter, rate window**",
                       "`mec.meter_consumption` of a 60 s rate window, random account (window unlogged)"),
    "mec_meter_usage3": ("**pg_mec meter_usage, 3 items**",
                         "`mec.meter_usage`: requests, input and output tokens in one decision"),
    "mec_meter_single3": ("pg_mec 3 × meter_consumption",
                          "the same three items as three `meter_consumption` calls in one transaction"),
    "app_txn": ("caller's transaction", "`BEGIN; INSERT` one app row`; COMMIT`, as mec_service, random account"),
    "mec_app_txn": ("**caller's transaction + meter**",
                    "the same with `mec.meter_consumption` for the row inside the transaction"),
    "insert1000": ("multi-row INSERT of 1 000",
                   "one `INSERT … SELECT` of 1 000 event rows into a table with the ledger's two B-tree indexes"),
    "mec_batch1000": ("**pg_mec batch of 1 000**",
                      "one `mec.meter_consumption_batch` of 1 000 events, random accounts, fresh keys"),
    "mec_meter_member3": ("**pg_mec meter, depth-3 member**",
                          "`mec.meter_consumption` by a member under a team and an organisation "
                          "(own limit + two pools), random member of 10 000"),
    "mec_meter_org_hot": ("**pg_mec meter, busy organisation**",
                          "the same, random member of the 100 of one organisation (its pool is hot)"),
}

# (label, numerator, denominator, target text, target test)
RATIOS = [
    ("pg_mec meter / update_1stmt", "mec_meter", "update_1stmt", "≥ 0.85", lambda r: r >= 0.85),
    ("pg_mec meter / naive_meter", "mec_meter", "naive_meter", "> 1", lambda r: r > 1.0),
    ("naive_meter / update_1stmt (reference)", "naive_meter", "update_1stmt", "", None),
    ("pg_mec meter / simple-update `-N`", "mec_meter", "simple_update", "", None),
    ("pg_mec check / select-only `-S`", "mec_check", "select_only", "≥ 0.8", lambda r: r >= 0.8),
    ("pg_mec check / naive_check", "mec_check", "naive_check", "> 1", lambda r: r > 1.0),
    ("naive_check / select-only `-S` (reference)", "naive_check", "select_only", "", None),
    ("pg_mec meter: hot / spread", "mec_meter_hot", "mec_meter", "report", None),
    ("naive_meter: hot / spread (reference)", "naive_meter_hot", "naive_meter", "", None),
    ("pg_mec meter hot / naive_meter hot", "mec_meter_hot", "naive_meter_hot", "> 1", lambda r: r > 1.0),
    ("pg_mec check: hot / spread", "mec_check_hot", "mec_check", "", None),
    ("pg_mec check hot / naive_check hot", "mec_check_hot", "naive_check_hot", "", None),
    ("pg_mec check: during sign-ups / quiet", "mec_check_churn", "mec_check", "report", None),
    ("pg_mec rate-window check / select-only `-S`", "mec_check_rate", "select_only", "report", None),
    ("pg_mec meter: rate window / metered counter", "mec_meter_rate", "mec_meter", "report", None),
    ("pg_mec meter_usage (3 items) / 3 × meter_consumption in one transaction", "mec_meter_usage3",
     "mec_meter_single3", "report", None),
    ("pg_mec meter: depth-3 member / flat account", "mec_meter_member3", "mec_meter", "report", None),
    ("pg_mec meter: busy organisation / members spread over 100", "mec_meter_org_hot",
     "mec_meter_member3", "report", None),
    ("naive_check: during sign-ups / quiet (reference: the sign-ups' own cost)", "naive_check_churn",
     "naive_check", "", None),
]


def _ratio(a: dict, b: dict) -> float:
    return a["tps"] / b["tps"] if b["tps"] > 0 else float("nan")


def _added_ms(a: dict, b: dict) -> float:
    """Mean latency pg_mec adds at one client: 1/tps − 1/tps of the baseline, in ms."""
    return 1000 / a["tps"] - 1000 / b["tps"] if a["tps"] > 0 and b["tps"] > 0 else float("nan")


# Issue 12's targets: (figure, numerator, denominator, client counts it is judged at, target text,
# the test, what a cell shows).
TARGETS = [
    ("`meter_consumption` / hand-written meter", "mec_meter", "naive_meter", (8, 32), "≥ 1.0×",
     lambda a, b: _ratio(a, b) >= 1.0, "ratio"),
    ("`meter_consumption` / one-statement `UPDATE` (moonshot)", "mec_meter", "update_1stmt", (8, 32), "≥ 0.85×",
     lambda a, b: _ratio(a, b) >= 0.85, "ratio"),
    ("`check_entitlement` / select-only `-S`", "mec_check", "select_only", (8, 32), "≥ 1.0×",
     lambda a, b: _ratio(a, b) >= 1.0, "ratio"),
    ("hot account / spread", "mec_meter_hot", "mec_meter", (32,), "≥ 0.9×, p99 < 5 ms",
     lambda a, b: _ratio(a, b) >= 0.9 and a["p99"] < 5, "ratio"),
    ("caller's write transaction with `meter_consumption` / without", "mec_app_txn", "app_txn", (8,), "≥ 0.75×",
     lambda a, b: _ratio(a, b) >= 0.75, "ratio"),
    ("… the latency it adds at 1 client", "mec_app_txn", "app_txn", (1,), "≤ +0.1 ms",
     lambda a, b: _added_ms(a, b) <= 0.1, "added"),
    ("`meter_consumption_batch` of 1 000 / multi-row `INSERT`", "mec_batch1000", "insert1000", (1, 8, 32),
     "≥ 0.25×", lambda a, b: _ratio(a, b) >= 0.25, "events"),
]


def targets_table(stats: dict, clients: list[int]) -> list[str]:
    """Issue 12's targets with ✓/✗ for the client counts this run measured."""
    rows: list[str] = []
    for label, num_w, den_w, judged, target_text, test, show in TARGETS:
        cells = []
        for c in clients:
            a, b = stats.get((num_w, c)), stats.get((den_w, c))
            if c not in judged or not a or not b:
                cells.append("")
                continue
            mark = " ✓" if test(a, b) else " ✗"
            lat = f"p50 {fmt_ms(a['p50'])} / {fmt_ms(b['p50'])}, p99 {fmt_ms(a['p99'])} / {fmt_ms(b['p99'])}"
            if show == "added":
                cells.append(f"+{_added_ms(a, b):.2f} ms{mark} ({lat})")
            elif show == "events":
                cells.append(f"{_ratio(a, b):.2f}×{mark}, {fmt_tps(a['tps'] * 1000)} events/s ({lat})")
            else:
                cells.append(f"{_ratio(a, b):.2f}×{mark} ({lat})")
        if any(cells):
            rows.append(f"| {label} | " + " | ".join(cells) + f" | {target_text} |")
    if not rows:
        return []
    out = ["## Targets (issue 12; ms: pg_mec / baseline)", "",
           "| figure | " + " | ".join(f"@{c}" for c in clients) + " | target |",
           "|---|" + "---:|" * len(clients) + "---|"]
    out += rows
    out += ["", "The gateway's targets (rps against pgbench, CPU per request) are in "
            "`scripts/mec bench --gateway`'s report.", ""]
    return out


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def latency(prefix: str) -> None:
    values: list[int] = []
    failed = 0
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                # client_id transaction_no time script_no time_epoch time_us [lag] [retries]
                if len(parts) < 3:
                    continue
                try:
                    values.append(int(parts[2]))
                except ValueError:  # "failed", "skipped", "serialization", "deadlock"
                    failed += 1
    values.sort()
    p50, p99 = percentile(values, 50) / 1000.0, percentile(values, 99) / 1000.0
    print(f"{p50:.3f} {p99:.3f} {len(values)} {failed}")


def read_results(path: str) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 9 or parts[0] == "workload":
                continue
            w, c, r, tps, p50, p99, n, failed, rc = parts[:9]
            wal = parts[9] if len(parts) > 9 else ""

            def num(s: str) -> float:
                try:
                    return float(s)
                except ValueError:
                    return float("nan")

            runs[(w, int(c))].append({
                "run": int(r), "tps": num(tps), "p50": num(p50), "p99": num(p99),
                "n": int(num(n)) if n.isdigit() else 0, "failed": int(failed) if failed.isdigit() else 0,
                "rc": int(rc) if rc.lstrip("-").isdigit() else 1,
                "wal": num(wal) if wal else float("nan"),
            })
    return runs


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    return {
        "tps": med([r["tps"] for r in runs]),
        "p50": med([r["p50"] for r in runs]),
        "p99": med([r["p99"] for r in runs]),
        "runs": len(runs),
        "spread": (min(r["tps"] for r in runs), max(r["tps"] for r in runs)),
        "bad": sum(1 for r in runs if r["rc"] != 0 or r["failed"] > 0),
        # WAL bytes per transaction (runs that recorded it)
        "wal": med([r["wal"] / r["n"] for r in runs if r["n"] > 0 and r["wal"] == r["wal"]]),
    }


def fmt_tps(v: float) -> str:
    return "–" if v != v else f"{v:,.0f}".replace(",", " ")


def fmt_ms(v: float) -> str:
    if v != v:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def read_meta(path: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "\t" in line:
                k, v = line.rstrip("\n").split("\t", 1)
                meta[k] = v
    return meta


def markdown(results_path: str, meta_path: str) -> None:
    meta = read_meta(meta_path)
    runs = read_results(results_path)
    stats = {key: summarize(rs) for key, rs in runs.items()}
    clients = sorted({c for _, c in stats})
    order = [w for w in WORKLOADS if any((w, c) in stats for c in clients)]
    order += sorted({w for w, _ in stats} - set(order))

    out: list[str] = []
    out.append(f"# pg_mec benchmark — {meta.get('date', '')}")
    out.append("")
    if meta.get("label"):
        out.append(f"> {meta['label']}")
        out.append("")
    out.append(
        f"PostgreSQL {meta.get('server_version', '?')}, {meta.get('cpus', '?')} CPU ({meta.get('cpu', '?')}), "
        f"`synchronous_commit={meta.get('synchronous_commit', '?')}`, `shared_buffers={meta.get('shared_buffers', '?')}`; "
        f"pg_mec {meta.get('extversion', '?')} ({meta.get('build', '?')} build, {meta.get('so', '?')}). "
        f"pgbench `-M prepared`, scale 10, {meta.get('duration', '?')} s per run, "
        f"median of {meta.get('runs', '?')} run(s), `-j` = min(clients, CPUs); "
        f"pgbench runs on the same machine. Latency from per-transaction logs (`-l`)."
    )
    out.append("")
    out.append(f"Command: `{meta.get('command', 'scripts/mec bench')}`")
    out.append("")

    # ---- workloads
    head = "| workload | " + " | ".join(f"tps @{c} | p50 / p99 ms @{c}" for c in clients) + " |"
    out.append("## Throughput and latency")
    out.append("")
    out.append(head)
    out.append("|---|" + "---:|---:|" * len(clients))
    notes: list[str] = []
    for w in order:
        label = WORKLOADS.get(w, (w, ""))[0]
        cells = []
        for c in clients:
            s = stats.get((w, c))
            if not s:
                cells += ["", ""]
                continue
            mark = " ⚠" if s["bad"] else ""
            if s["bad"]:
                notes.append(f"{label} @{c}: {s['bad']} run(s) had failed transactions or aborted clients")
            cells += [fmt_tps(s["tps"]) + mark, f"{fmt_ms(s['p50'])} / {fmt_ms(s['p99'])}"]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    for w in order:
        if w in WORKLOADS:
            out.append(f"- {WORKLOADS[w][0]}: {WORKLOADS[w][1]}")
    out.append("")

    out += targets_table(stats, clients)

    # ---- ratios
    rows: list[str] = []
    for label, num_w, den_w, target_text, target in RATIOS:
        if not any((num_w, c) in stats and (den_w, c) in stats for c in clients):
            continue
        cells = []
        for c in clients:
            a, b = stats.get((num_w, c)), stats.get((den_w, c))
            if not a or not b or not (b["tps"] > 0):
                cells.append("")
                continue
            r = a["tps"] / b["tps"]
            verdict = "" if target is None else (" ✓" if target(r) else " ✗")
            cells.append(f"{r:.2f}×{verdict} ({fmt_ms(a['p99'])} / {fmt_ms(b['p99'])})")
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {target_text} |")
    if rows:
        out.append("## pg_mec against the baselines (tps ratio; p99 pg_mec / baseline in ms)")
        out.append("")
        out.append("| ratio | " + " | ".join(f"@{c}" for c in clients) + " | target |")
        out.append("|---|" + "---:|" * len(clients) + "---|")
        out += rows
        out.append("")
    wal_rows = []
    for w in order:
        cells = [stats[(w, c)]["wal"] if (w, c) in stats else float("nan") for c in clients]
        if any(v == v for v in cells):
            label = WORKLOADS.get(w, (w, ""))[0]
            wal_rows.append(f"| {label} | " + " | ".join("–" if v != v else f"{v:,.0f}".replace(",", " ")
                                                         for v in cells) + " |")
    if wal_rows:
        out.append("## WAL per transaction (bytes, median of runs; `pg_current_wal_insert_lsn()` around each run)")
        out.append("")
        out.append("| workload | " + " | ".join(f"@{c}" for c in clients) + " |")
        out.append("|---|" + "---:|" * len(clients))
        out += wal_rows
        out.append("")
    spreads = []
    for (w, c), s in sorted(stats.items()):
        lo, hi = s["spread"]
        if s["runs"] > 1 and s["tps"] > 0 and (hi - lo) / s["tps"] > 0.15:
            spreads.append(f"{WORKLOADS.get(w, (w,))[0]} @{c}: {fmt_tps(lo)}–{fmt_tps(hi)}")
    if spreads:
        out.append("Runs that varied by more than 15% (min–max tps): " + "; ".join(spreads) + ".")
        out.append("")
    if notes:
        out.append("⚠ " + "; ".join(notes) + " — see the pgbench output in the run's log.")
        out.append("")
    print("\n".join(out))


def elf_section_names(data: bytes) -> list[str]:
    """Section names of a 64-bit little-endian ELF file (empty when it is not one)."""
    import struct

    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shstrndx >= shnum:
        return []
    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size
    _, str_off, str_size = header(shstrndx)
    table = data[str_off:str_off + str_size]
    names = []
    for i in range(shnum):
        name = header(i)[0]
        names.append(table[name:table.index(b"\0", name)].decode("ascii", "replace"))
    return names


def build(path: str) -> None:
    """'debug' when pg_mec.so has DWARF sections (a cargo dev-profile build), else 'release'."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        print("unknown")
        return
    names = elf_section_names(data)
    if not names:
        print("unknown")
    else:
        print("debug" if ".debug_info" in names else "release")


# ---------------------------------------------------------------- gateway (bench/gateway.sh)

# Issue 12, at 32 connections: gateway req/s as a multiple of pgbench tps, and gateway p99 (ms).
# meter_consumption with group commit ≥ 1.5×, p99 < 10 ms; check_entitlement ≥ 0.8× (p99 as issue 4's).
GATEWAY_TARGETS = {"meter_consumption": (1.5, 10.0), "check_entitlement": (0.8, 20.0)}
GATEWAY_TARGET_CLIENTS = 32


def wrk_line(line: str) -> None:
    """One MECGW line -> "rps p50_ms p99_ms requests bad detail" (bad = non-2xx + socket errors)."""
    body, _, first_error = line.partition(" first_error=")
    kv = dict(part.split("=", 1) for part in body.split()[1:] if "=" in part)

    def i(k: str) -> int:
        try:
            return int(float(kv.get(k, "0")))
        except ValueError:
            return 0

    n, dur = i("requests"), i("duration_us")
    rps = n / (dur / 1e6) if dur > 0 else float("nan")
    socket = {k: i(k) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")}
    bad = i("non2xx") + sum(socket.values())
    detail = []
    if i("non2xx"):
        detail.append(f"non-2xx {i('non2xx')} ({kv.get('statuses', '?')})")
    for k, v in socket.items():
        if v:
            detail.append(f"{k.replace('_', ' ')} {v}")
    if i("non2xx") and first_error.strip() not in ("", "-"):
        detail.append("first: " + first_error.strip()[:200])
    text = "; ".join(detail) if detail else "-"
    print(f"{rps:.1f} {i('p50_us') / 1000:.3f} {i('p99_us') / 1000:.3f} {n} {bad} {text}")


def gateway(results_path: str, meta_path: str) -> None:
    meta = read_meta(meta_path)

    def num(s: str) -> float:
        try:
            return float(s)
        except ValueError:
            return float("nan")

    rows: dict[tuple[str, str, int], dict] = {}
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 9 or parts[0] == "side":
                continue
            side, fn, c, rps, p50, p99, n, bad, detail = parts[:9]
            cpu = [num(x) for x in (parts[9:12] + ["", "", ""])[:3]]
            rows[(side, fn, int(c))] = {
                "rps": num(rps), "p50": num(p50), "p99": num(p99),
                "n": int(num(n)) if n.isdigit() else 0, "bad": int(bad) if bad.isdigit() else 1,
                "detail": detail, "cpu": cpu,
            }
    fns = [fn for fn in ("check_entitlement", "meter_consumption") if any(k[1] == fn for k in rows)]
    clients = sorted({k[2] for k in rows})

    out: list[str] = []
    out.append(f"# pg_mec gateway benchmark — {meta.get('date', '')}")
    out.append("")
    if meta.get("label"):
        out.append(f"> {meta['label']}")
        out.append("")
    out.append(
        f"PostgreSQL {meta.get('server_version', '?')}, {meta.get('cpus', '?')} CPU ({meta.get('cpu', '?')}), "
        f"`synchronous_commit={meta.get('synchronous_commit', '?')}`, load average at start "
        f"{meta.get('load', '?')}; pg_mec {meta.get('extversion', '?')}, mec-gateway "
        f"{meta.get('gateway_version', '?')} with a pool of {meta.get('pool', '?')} connections per role "
        f"(`MEC_POOL_SIZE`). {meta.get('duration', '?')} s per run, one run per cell. "
        f"Gateway: {meta.get('wrk', 'wrk')} (`--latency`, `bench/gateway.lua`), `POST /api/rpc/<fn>` with a "
        f"`mec_service` JWT, random account of 10 000, a fresh idempotency key per meter request. "
        f"pgbench: the same function as the login role `mec_bench_gw` (member of `mec_service`), "
        f"`-M prepared`, `-j` = min(clients, CPUs). Both in database `mec`, namespace `bench-gateway`; "
        f"wrk / pgbench, the gateway and PostgreSQL share the machine."
    )
    out.append("")
    out.append(f"Command: `{meta.get('command', 'scripts/mec bench --gateway')}`")
    out.append("")
    out.append("| function | conns | gateway req/s | gateway p50 / p99 ms | gateway non-2xx | pgbench tps | "
               "pgbench p50 / p99 ms | gateway / pgbench |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    problems: list[str] = []
    verdicts: list[str] = []
    for fn in fns:
        for c in clients:
            g, p = rows.get(("gateway", fn, c)), rows.get(("pgbench", fn, c))
            if not g and not p:
                continue
            g = g or {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "bad": 0, "n": 0, "detail": "-"}
            p = p or {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "bad": 0, "n": 0, "detail": "-"}
            ratio = g["rps"] / p["rps"] if p["rps"] > 0 and g["rps"] == g["rps"] else float("nan")
            rtxt = "–" if ratio != ratio else f"{ratio:.2f}×"
            ratio_target, p99_target = GATEWAY_TARGETS.get(fn, (1.0, 20.0))
            if c == GATEWAY_TARGET_CLIENTS and ratio == ratio:
                rtxt += " ✓" if ratio >= ratio_target else " ✗"
            p99txt = fmt_ms(g["p99"])
            if c == GATEWAY_TARGET_CLIENTS and g["p99"] == g["p99"]:
                p99txt += " ✓" if g["p99"] < p99_target else " ✗"
            bad_txt = "0" if not g["bad"] else f"**{g['bad']}** ⚠"
            ptps = fmt_tps(p["rps"]) + (" ⚠" if p["bad"] else "")
            out.append(
                f"| `{fn}` | {c} | {fmt_tps(g['rps'])} | {fmt_ms(g['p50'])} / {p99txt} | {bad_txt} | "
                f"{ptps} | {fmt_ms(p['p50'])} / {fmt_ms(p['p99'])} | {rtxt} |"
            )
            if g["bad"]:
                problems.append(f"gateway `{fn}` @{c}: {g['bad']} of {g['n']} responses were errors — {g['detail']}")
            if p["bad"]:
                problems.append(f"pgbench `{fn}` @{c}: {p['detail']}")
            if c == GATEWAY_TARGET_CLIENTS:
                ok_r = ratio == ratio and ratio >= ratio_target
                ok_p = g["p99"] == g["p99"] and g["p99"] < p99_target
                ok_e = not g["bad"]
                verdicts.append(
                    f"- `{fn}` @{c}: ratio {rtxt.split(' ')[0]} {'✓' if ok_r else '✗'} (≥ {ratio_target}), "
                    f"p99 {fmt_ms(g['p99'])} ms {'✓' if ok_p else '✗'} (< {p99_target:.0f} ms)"
                    + ("" if ok_e else f", ✗ {g['bad']} error responses")
                )
    out.append("")
    if verdicts:
        out.append(f"Targets (issue 12, at {GATEWAY_TARGET_CLIENTS} connections): gateway req/s ≥ "
                   + ", ".join(f"{r} × pgbench tps and p99 < {p:.0f} ms for `{f}`"
                               for f, (r, p) in GATEWAY_TARGETS.items()) + ".")
        out.append("")
        out += verdicts
        out.append("")
    def cores(v: float) -> str:
        return "–" if v != v else f"{v:.2f}"

    cpu_rows = []
    for fn in fns:
        for c in clients:
            g, p = rows.get(("gateway", fn, c)), rows.get(("pgbench", fn, c))
            if not g or not p or "cpu" not in g:
                continue
            gc, pc = g["cpu"], p["cpu"]
            cpu_rows.append(f"| `{fn}` | {c} | {cores(gc[0])} | {cores(gc[1])} | {cores(gc[2])} | "
                            f"{cores(pc[0])} | {cores(pc[2])} |")
    if cpu_rows:
        out.append(f"CPU during each run, in cores of {meta.get('cpus', '?')} (the machine's busy time includes "
                   "PostgreSQL and anything else running on it):")
        out.append("")
        out.append("| function | conns | wrk | gateway | machine (gateway run) | pgbench | machine (pgbench run) |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        out += cpu_rows
        out.append("")
    if problems:
        out.append("⚠ Errors — these runs are not clean:")
        out.append("")
        out += [f"- {p}" for p in problems]
        out.append("")
    else:
        out.append("Every gateway response was 2xx and no pgbench transaction failed.")
        out.append("")
    print("\n".join(out))


def read_tsv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [dict(zip(lines[0], row)) for row in lines[1:]] if lines else []


def scale(results: str, soak: str, meta_path: str) -> None:
    """Each stage's throughput as a ratio of the smallest stage's, per workload and client count."""
    meta = read_meta(meta_path)
    runs = read_tsv(results)
    out = ["# pg_mec at scale", ""]
    if meta.get("label"):
        out += [meta["label"], ""]
    out += [f"{meta.get('date', '?')}, `{meta.get('command', '')}`; {meta.get('duration', '?')} s per run, "
            f"{meta.get('cpus', '?')} CPUs, shared cache of {meta.get('shared_cache_entries') or '?'} entries.",
            "", "| stage | workload | clients | tps | × smallest | p50 ms | p99 ms | shared-cache hits | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    first: dict[tuple[str, str], float] = {}
    for r in runs:
        key = (r["workload"], r["clients"])
        tps = float(r["tps"]) if r["tps"] not in ("", "nan") else float("nan")
        first.setdefault(key, tps)
        ratio = tps / first[key] if first[key] == first[key] and first[key] > 0 else float("nan")
        hits = r.get("cache_hit_pct", "-")
        out.append(f"| {r['stage']} | {r['workload']} | {r['clients']} | {fmt_tps(tps)} | "
                   f"{'–' if ratio != ratio else f'{ratio:.2f}×'} | {fmt_ms(float(r['p50_ms']))} | "
                   f"{fmt_ms(float(r['p99_ms']))} | {hits if hits == '-' else hits + ' %'} | {r['failed']} |")
    samples = read_tsv(soak)
    if len(samples) > 1:
        out += ["", "Soak: `meter_consumption` at 8 clients on the largest stage, sampled as it runs.", "",
                "| second | ledger inserts | consumption MB | counters MB | idempotency keys MB | their indexes MB "
                "| HOT share of counter updates (interval) | dead rows | autovacuums |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        prev = None
        for s in samples:
            # HOT share of the counter updates since the previous sample (pg_stat's are cumulative)
            hot = "–"
            if prev is not None:
                upd = int(s["counter_updates"]) - int(prev["counter_updates"])
                if upd > 0:
                    hot = f"{100.0 * (int(s['hot_updates']) - int(prev['hot_updates'])) / upd:.1f} %"
            prev = s
            out.append(f"| {s['second']} | {s['ledger_inserts']} | {s['consumption_mb']} | {s['counters_mb']} | "
                       f"{s['keys_mb']} | {s['indexes_mb']} | {hot} | {s['dead_rows']} | {s['autovacuums']} |")
    print("\n".join(out))


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "latency":
        latency(argv[1])
    elif len(argv) >= 3 and argv[0] == "markdown":
        markdown(argv[1], argv[2])
    elif len(argv) >= 2 and argv[0] == "build":
        build(argv[1])
    elif len(argv) >= 2 and argv[0] == "wrk":
        wrk_line(argv[1])
    elif len(argv) >= 3 and argv[0] == "gateway":
        gateway(argv[1], argv[2])
    elif len(argv) >= 4 and argv[0] == "scale":
        scale(argv[1], argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
