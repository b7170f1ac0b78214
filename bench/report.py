#!/usr/bin/env python3
"""Turns bench/run.sh results into BENCHMARKS.md and bench/results/backup-bytes.svg.

  report.py RESULTS_DIR BENCHMARKS_MD

Reads the newest full run under RESULTS_DIR (STAMP-full/), or the newest quick run when
there is no full one: raw.jsonl (one measurement a line) and machine.json. Medians over
runs; ratios are Otter over the anchor measured in the same run.
"""
import json
import os
import statistics
import sys

NOTES_FILE = "notes.md"  # hand-written explanations kept beside the results, if present


ITEMS = ["serve", "fleet", "hash", "apply", "delta", "backup", "restore", "trials"]


def load(results):
    """Rows of the newest full run (else the newest run); an item that run lacks (a run with
    --only, or one that stopped early) is taken from the newest run that has it, and named."""
    runs = sorted(d for d in os.listdir(results)
                  if os.path.isfile(os.path.join(results, d, "raw.jsonl")))
    full = [d for d in runs if d.endswith("-full")]
    pick = (full or runs)[-1:]
    if not pick:
        sys.exit("report.py: no results under " + results)

    def rows_of(name):
        path = os.path.join(results, name, "raw.jsonl")
        return [json.loads(l) for l in open(path) if l.strip()]
    d = os.path.join(results, pick[0])
    rows = rows_of(pick[0])
    borrowed = {}
    for item in ITEMS:
        if any(r["item"] == item for r in rows):
            continue
        for other in reversed(runs):
            got = [r for r in rows_of(other) if r["item"] == item]
            if got:
                rows += got
                borrowed[item] = other
                break
    machine = json.load(open(os.path.join(d, "machine.json")))
    machine["stale_build"] = os.path.exists(os.path.join(d, "stale-build"))
    machine["borrowed"] = borrowed
    return pick[0], rows, machine


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def sel(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def mib(b):
    return None if b is None else b / 1048576


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def met(ok):
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def svg_bars(path, title, groups, series, ylabel):
    """Grouped bar chart: groups = labels on x; series = [(name, color, [values])]."""
    w, h, left, bottom, top = 640, 340, 70, 50, 40
    plot_w, plot_h = w - left - 20, h - bottom - top
    vmax = max([v for _, _, vs in series for v in vs if v is not None] + [1])
    n, k = len(groups), len(series)
    gw = plot_w / max(n, 1)
    bw = gw * 0.8 / k
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
             f'<text x="15" y="{top + plot_h / 2}" transform="rotate(-90 15 {top + plot_h / 2})" '
             f'text-anchor="middle">{ylabel}</text>']
    for i in range(5):
        v = vmax * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{v:.0f}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#ddd"/>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        parts.append(f'<text x="{left + gi * gw + gw / 2}" y="{top + plot_h + 18}" '
                     f'text-anchor="middle">{g}</text>')
        for si, (name, color, vs) in enumerate(series):
            v = vs[gi] if gi < len(vs) else None
            if v is None:
                continue
            bh = plot_h * v / vmax
            x = x0 + si * bw
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - bh:.1f}" width="{bw:.1f}" '
                         f'height="{bh:.1f}" fill="{color}"><title>{name}: {v:.1f}</title></rect>')
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{top + plot_h - bh - 3:.1f}" '
                         f'text-anchor="middle" font-size="10">{v:.1f}</text>')
    for si, (name, color, _) in enumerate(series):
        x = left + 10 + si * 120
        parts.append(f'<rect x="{x}" y="{h - 18}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{x + 16}" y="{h - 8}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    results, md_path = sys.argv[1], sys.argv[2]
    name, rows, m = load(results)
    quick = m.get("mode") == "quick"
    out = []
    w = out.append
    w("# Otter benchmarks\n")
    w("Measured by `bench/run.sh` side by side with the anchors a user would pick instead, in "
      "one run on one machine. Figures are medians over the runs of that item; a ratio is "
      "Otter's figure over the anchor's from the same run. Targets come from issue 7; a missed "
      "target is shown as missed, with why and what would fix it.\n")
    w(f"Run `{name}` ({m.get('mode')} mode{': smaller sizes, shorter runs' if quick else ''}), "
      f"{m.get('total_seconds', '?')} s in all, tree `{m.get('git')}`"
      + (" (**the build of the tree failed during the run: the previous release build was "
         "measured**)" if m.get("stale_build") else "") + ".\n")
    if m.get("borrowed"):
        w("Items missing from that run are taken from the newest run that has them: "
          + "; ".join(f"{k} from `{v}`" for k, v in m["borrowed"].items()) + ".\n")
    w("## Machine\n")
    la0 = ", ".join(f"{x:.2f}" for x in m.get("load_at_start", []))
    la1 = ", ".join(f"{x:.2f}" for x in m.get("load_at_end", []))
    w(table(["", ""], [
        ["CPU", f"{m.get('cpu')} × {m.get('nproc')} (SHA-NI: {'yes' if m.get('sha_ni') else 'no'})"],
        ["RAM", f"{m.get('ram_gib')} GiB"],
        ["Kernel / OS", f"{m.get('kernel')} / {m.get('os')}"],
        ["Scratch space", f"`{m.get('bench_dir')}` ({m.get('bench_fs')})"],
        ["Load average (1/5/15 min) at start / end", f"{la0} / {la1}"],
        ["Rust", m.get("rustc")],
        ["Anchors", "; ".join(f"{k}: {v}" for k, v in m.get("anchors", {}).items())],
    ]))
    w("\nThe load averages include the benchmark's own work (at the end, the power-loss trials); "
      "other work on the machine raises them above about 2. Otter and its anchor always ran back "
      "to back under the same conditions.\n")

    # 1 serving
    w("## 1. Serving: otter-server vs nginx (wrk)\n")
    serve = sel(rows, item="serve")
    if serve:
        def srv(system, what, key):
            vals = []
            for r in sel(serve, system=system, what=what):
                secs = r["duration_us"] / 1e6
                vals.append(r["requests"] / secs if key == "rps" else r["bytes"] / 1e6 / secs)
            return med(vals)

        def errs(system, what):
            return sum(r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
                       + r["non_2xx_3xx"] for r in sel(serve, system=system, what=what))
        trs = []
        for what, key, label in [("timestamp", "rps", "`timestamp.json` requests/s"),
                                 ("target64", "mbs", "64 MiB target, MB/s")]:
            o, n = srv("otter", what, key), srv("nginx", what, key)
            r = ratio(o, n)
            eo, en = errs("otter", what), errs("nginx", what)
            trs.append([label, fmt(o), fmt(n), fmt(r, 2), "≥ 0.80, 0 errors",
                        f"errors {eo} / {en}", met(r is not None and r >= 0.8 and eo == 0)])
        w(table(["measure", "Otter", "nginx", "ratio", "target", "errors Otter / nginx", "met?"], trs))
        one = serve[0]
        conns = sorted({(r["what"], r["connections"]) for r in serve})
        w(f"\nwrk -t2, {', '.join(f'{c} connections for {wh}' for wh, c in conns)}, "
          f"{one.get('duration')} per run, {len(sel(serve, system='otter', what='timestamp'))} runs each, "
          "Otter and nginx alternating. nginx serves the very files of the server's data dir "
          "(`store/repo/`), with `sendfile on` and access logs off. Errors count connect/read/"
          "write errors, timeouts and non-2xx/3xx answers, summed over all runs.\n")
    else:
        w("Not measured in this run.\n")

    # 2 fleet
    w("## 2. Fleet load: simulated terminals polling and reporting\n")
    fl = sel(rows, item="fleet")
    if fl:
        f = fl[0]
        hwm = f.get("server_vmhwm_kib")
        w(table(["measure", "Otter", "target", "met?"], [
            ["terminals enrolled (through the API)", fmt(f["terminals"]), "", ""],
            ["enrollment rate (token + enroll), per s", fmt(f["enrollments_per_s"]), "", ""],
            ["sustained requests/s (poll + signed report)", fmt(f["requests_per_s"]), "", ""],
            ["latency p50 / p99 / max, ms", f"{fmt(f['p50_ms'], 2)} / {fmt(f['p99_ms'], 2)} / {fmt(f['max_ms'], 1)}", "", ""],
            ["poll p99 / report p99, ms", f"{fmt(f['poll_p99_ms'], 2)} / {fmt(f['report_p99_ms'], 2)}", "", ""],
            ["errors", fmt(f["errors"]), "0", met(f["errors"] == 0 and not f.get("enroll_errors"))],
            ["server peak RSS (VmHWM), MiB", fmt(hwm / 1024 if hwm else None), "", ""],
        ]))
        w(f"\n`tests/examples/fleet_load.rs` (release build): {f['terminals']} terminals, each with its own "
          "ed25519 key, enrolled with one single-use token each (created through "
          "`POST /api/v1/enrollment-tokens`), then for "
          f"{f['seconds']:.0f} s a closed loop over {f['connections']} keep-alive connections: each "
          "terminal in turn GETs `/repo/metadata/timestamp.json` and POSTs a signed "
          "`/api/v1/device/report` (fresh nonce, stored in SQLite with the report). The load "
          "generator runs on the same 2 cores as the server. There is no anchor for this item.\n")
        if f.get("error_kinds"):
            w("Errors by kind: " + json.dumps(f["error_kinds"]) + "\n")
    else:
        w("Not measured in this run.\n")

    # 3 hashing and apply
    w("## 3. Verification throughput and agent memory while applying\n")
    hs = sel(rows, item="hash")
    ap = sel(rows, item="apply")
    if hs or ap:
        trs = []
        if hs:
            s = med(r["bytes"] / 1e6 / r["seconds"] for r in sel(hs, system="sha256sum"))
            both = med(r["mb_per_s"] for r in sel(hs, system="otter", algorithms="sha256,sha512"))
            one = med(r["mb_per_s"] for r in sel(hs, system="otter", algorithms="sha256"))
            rb, ro = ratio(both, s), ratio(one, s)
            size = sel(hs, system="sha256sum")[0]["bytes"] / 2**20
            size_text = f"{size / 1024:g} GiB" if size >= 1024 else f"{size:.0f} MiB"
            trs.append([f"hash verification of a {size_text} target (sha256 + sha512, as the agent checks targets signed by otter-server), MB/s",
                        fmt(both), f"sha256sum {fmt(s)}", fmt(rb, 2), "≥ 0.95", met(rb is not None and rb >= 0.95)])
            trs.append(["the same verifier with sha256 only, MB/s", fmt(one), f"sha256sum {fmt(s)}",
                        fmt(ro, 2), "≥ 0.95", met(ro is not None and ro >= 0.95)])
        if ap:
            a = ap[0]
            trs.append([f"agent peak RSS: `otter-agent update` downloading, verifying, applying a {a['payload_mib']} MiB bundle, MiB",
                        fmt(a["max_rss_kib"] / 1024), "", "", "≤ 32", met(a["max_rss_kib"] / 1024 <= 32)])
        w(table(["measure", "Otter", "anchor", "ratio", "target", "met?"], trs))
        if ap:
            a = ap[0]
            w(f"\nThe update took {a['seconds']:.1f} s for a {a['bundle_bytes'] / 1048576:.0f} MiB bundle "
              "(incompressible payload) from otter-server on loopback, health check included; peak RSS "
              "is /usr/bin/time's maximum resident set size.")
        w("\n`tests/examples/hash_throughput.rs` feeds `otter_keys::hash::MultiHasher` (the agent's "
          "verifier) 64 KiB reads of the file, as the downloader does; `sha256sum` hashes the same "
          "file right before it, page cache warm for both.\n")
    else:
        w("Not measured in this run.\n")

    # 4 deltas
    w("## 4. Deltas: Otter vs bsdiff vs xdelta3\n")
    ds = sel(rows, item="delta")
    if ds:
        plot = {}
        for pair, label in [("fw", "synthetic firmware image, 1% of 4 KiB blocks changed"),
                            ("bin", "otter-server release binary, two builds of the tree")]:
            p = sel(ds, pair=pair)
            if not p:
                continue
            new_b = p[0]["new_bytes"]
            w(f"### {label} ({new_b / 1048576:.1f} MiB)\n")
            if pair == "bin":
                w(f"The otter-server binary of the release build made before this run "
                  f"({p[0].get('old_built')}, {p[0]['old_bytes'] / 1048576:.1f} MiB, kept in "
                  f"`~/.cache/otter-bench/prev/`) against the one this run built "
                  f"({p[0].get('new_built')}): the same program two development stages apart.\n")
            stats = {}
            for tool in ["otter", "bsdiff", "xdelta3"]:
                t = sel(p, system=tool)
                if t:
                    stats[tool] = {k: med(r[k] for r in t) for k in
                                   ["delta_bytes", "create_seconds", "apply_seconds", "apply_rss_kib", "create_rss_kib"]}
                    stats[tool]["runs"] = len(t)
            best = min(s["delta_bytes"] for s in stats.values())
            trs = []
            for tool, s in stats.items():
                trs.append([tool, f"{s['delta_bytes'] / 1048576:.2f} MiB ({100 * s['delta_bytes'] / new_b:.2f}%)",
                            fmt(s["create_seconds"], 2), fmt(s["create_rss_kib"] / 1024), fmt(s["apply_seconds"], 2),
                            fmt(s["apply_rss_kib"] / 1024), s["runs"]])
            w(table(["tool", "delta size", "create, s", "create peak RSS, MiB", "apply, s",
                     "apply peak RSS, MiB", "runs"], trs))
            if "otter" in stats:
                o = stats["otter"]
                size_r = o["delta_bytes"] / best
                speed = ratio(stats.get("bsdiff", {}).get("create_seconds"), o["create_seconds"])
                w("\n" + table(["target", "Otter", "anchor", "ratio", "met?"], [
                    ["size within 10% of the best", f"{o['delta_bytes'] / 1048576:.2f} MiB",
                     f"best {best / 1048576:.2f} MiB", fmt(size_r, 3), met(size_r <= 1.10)],
                    ["creation ≥ 10× faster than bsdiff", f"{o['create_seconds']:.2f} s",
                     f"bsdiff {fmt(stats.get('bsdiff', {}).get('create_seconds'), 2)} s",
                     f"{fmt(speed, 1)}× faster", met(speed is not None and speed >= 10)],
                ]))
            else:
                w("\nThe Otter delta CLIs (`otter-server delta create`, `otter-agent delta apply`) "
                  "were not in this build: Otter's column is missing, targets not assessed.")
            w("")
            plot[pair] = stats
        w("xdelta3 ran as `xdelta3 -9 -S djw`; bsdiff/bspatch are Debian's; peak RSS from "
          "/usr/bin/time. bsdiff runs once per pair (minutes and several GiB of memory "
          "at 256 MiB); the quick mode runs everything once; other figures are medians of 3 runs. "
          "Otter's apply is given the expected SHA-256 and length, as the agent does, so it also "
          "verifies the rebuilt file; the anchors do not.\n")
    else:
        w("Not measured in this run.\n")

    # 5 backups
    w("## 5. Backups: Otter vs restic on the reference sales database\n")
    bk = sel(rows, item="backup")
    rs = sel(rows, item="restore")
    if bk:
        def b(system, n, key):
            return med(r[key] for r in sel(bk, system=system, backup=n))
        db_mib = mib(bk[0]["db_bytes"])
        ro = med(r["seconds"] for r in sel(rs, system="otter"))
        rr = med(r["seconds"] for r in sel(rs, system="restic"))
        trs = []
        for label, key, n, conv in [("first backup, s", "seconds", 0, None),
                                    ("incremental backup after `mutate update 1`, s", "seconds", 1, None),
                                    ("bytes added to the store by that incremental, MiB", "added_bytes", 1, mib)]:
            o, r_ = b("otter", n, key), b("restic", n, key)
            if conv:
                o, r_ = conv(o), conv(r_)
            rt = ratio(o, r_)
            trs.append([label, fmt(o, 2), fmt(r_, 2), fmt(rt, 2), "< restic", met(rt is not None and rt < 1)])
        rt = ratio(ro, rr)
        trs.append(["restore of the latest backup, s", fmt(ro, 2), fmt(rr, 2), fmt(rt, 2), "< restic",
                    met(rt is not None and rt < 1)])
        w(table(["measure", "Otter", "restic", "ratio", "target", "met?"], trs))
        reps = len({r["rep"] for r in bk})
        nmax = max(r["backup"] for r in bk)
        sales = bk[0].get("sales")
        sales_text = f", {sales:,} sales" if isinstance(sales, int) else ""
        w(f"\nDatabase: `pos_db.py make` ({db_mib:.0f} MiB{sales_text}), then {nmax} times "
          "`pos_db.py mutate DB update 1` (1% of rows refunded at random places), a backup by each "
          f"tool after each change; {reps} repetition{'s' if reps > 1 else ''} from scratch, medians. Otter: `otter-agent backup` "
          "to a real `otter-server` on loopback (encrypted, signed, countersigned); bytes added = growth "
          "of the server's `store/` dir. restic: `restic backup` to a local repository; bytes added = "
          "growth of the repository dir. Restore: `otter-agent restore --latest` (verifies the chain, "
          "every pack and page, integrity check and row counts, then replaces the live file "
          "atomically) vs `restic restore latest --target DIR`.\n")
        groups = [("first" if n == 0 else f"#{n + 1}") for n in range(nmax + 1)]
        svg = os.path.join(results, "backup-bytes.svg")
        svg_bars(svg, "Bytes added to the store per backup (MiB, median)", groups,
                 [("Otter", "#1f77b4", [mib(b("otter", n, "added_bytes")) for n in range(nmax + 1)]),
                  ("restic", "#ff7f0e", [mib(b("restic", n, "added_bytes")) for n in range(nmax + 1)])],
                 "MiB")
        w("![Bytes added per backup, Otter vs restic](bench/results/backup-bytes.svg)\n")
    else:
        w("Not measured in this run.\n")

    # 6 trials
    w("## 6. Power-loss trials (SIGKILL)\n")
    tr = sel(rows, item="trials")
    if tr:
        trs = []
        for t in tr:
            per_min = t["trials"] / (t["seconds"] / 60)
            trs.append([t["what"], fmt(t["trials"]), "0" if t["passed"] else "≥ 1 (test failed)",
                        fmt(per_min), "0 mixed states", met(bool(t["passed"])), t.get("outcomes", "")])
        w(table(["operation", "trials", "mixed states", "trials/min", "target", "met?", "outcomes"], trs))
        w("\nApply: `OTTER_APPLY_TRIALS=N cargo test --release -p otter-agent --test apply_power_loss` "
          "(half installs, half rollbacks, each killed at a random point; a third of them also have "
          "the recovery killed; each trial checks the tree is exactly the old or the new version). "
          "Restore: `OTTER_RESTORE_TRIALS=N cargo test --release -p otter-tests --test restore_end_to_end "
          "sigkill_during_restore` (the live database must be exactly the old or the restored one). "
          "A test stops at the first mixed state, so a failed test means at least one. Trials/min "
          "counts the whole test process, set-up included.\n")
    else:
        w("Not measured in this run.\n")

    notes = os.path.join(os.path.dirname(md_path), "bench", NOTES_FILE)
    if os.path.exists(notes):
        w(open(notes).read())
    w("## Reproduce\n")
    w("```sh\nbench/run.sh            # full run, under 30 min (15 here, plus the release build): writes bench/results/STAMP-full/ and this file\n"
      "bench/run.sh --quick    # under 5 min (90 s here once built): smaller sizes, shorter runs\n"
      "bench/run.sh --only 5   # one item\n```\n")
    w("The script installs its anchors with apt-get when missing (wrk, nginx-light, restic, bsdiff, "
      "xdelta3, time, zstd), builds with `cargo build --release --locked`, and keeps every raw "
      "measurement in `bench/results/STAMP-MODE/raw.jsonl` (wrk outputs, logs and `machine.json` "
      "beside it). `bench/report.py` turns the newest full run (else the newest quick one) into "
      "this file.\n")
    with open(md_path, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
