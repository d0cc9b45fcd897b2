#!/usr/bin/env python3
"""The helper of scripts/soak-test.sh (standard library only); see that script's header
for what a soak run is and the plateau rule, which `report` applies.

    soak.py schedule --seed N --window S [--faults N] [--nodes 2] [--lease-ms 3000]
        print a fault schedule for `tpcc --fault`, one spec a line (kill and pause)
    soak.py cuts --seed N --window S --count N [--lease-ms MS] [--nodes 2]
        print a link-cut schedule: `AT DOWN compute-N` a line
    soak.py sample --out FILE --interval S --phase NAME --service ROLE:DATA_DIR:TOKEN...
        sample disk and RSS of each service until SIGTERM; DATA_DIR `-` for none; the
        process is the one whose command line has the argument TOKEN (found again after
        every restart)
    soak.py report --out DIR [--phase NAME:EVENTS:REPORT:STATUS...] [thresholds]
        table on stdout, DIR/soak.jsonl, DIR/soak.svg; exit 1 on a lost order, a failed
        check, a failed tpcc run or growth that does not level off
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time

MIB = 1 << 20


# ---------------------------------------------------------------------------- schedule

def fault_schedule(seed, window, count, nodes, lease_ms, settle, tail):
    """`count` faults in the window [settle, window - tail], kinds in shuffled rounds of
    (kill storage, kill GTM, kill a compute node, pause a compute node past its lease),
    at random times: the free time (the span minus every fault's downtime and recovery
    allowance) is split at `count` uniform random points."""
    rng = random.Random(seed)
    kinds = ["kill:storage-0", "kill:gtm", "kill:compute", "pause:compute"]
    plan = []
    while len(plan) < count:
        rnd = kinds[:]
        rng.shuffle(rnd)
        plan.extend(rnd)
    plan = plan[:count]
    faults = []
    for k in plan:
        if k.endswith(":compute"):
            k = f"{k}-{rng.randint(1, nodes)}"
        if k.startswith("kill"):
            down, recover = round(rng.uniform(0.5, 2.0), 1), 4.0
        else:  # past the lease, so the node is fenced and must rejoin
            down, recover = round(lease_ms / 1000 + rng.uniform(2.0, 4.0), 1), 4.0
        faults.append((k, down, recover))
    span = window - settle - tail
    free = span - sum(d + r for _, d, r in faults)
    if free < 2.0 * count:
        sys.exit(f"soak.py: {count} faults do not fit in a {window} s window "
                 f"(need about {span - free + 2 * count:.0f} s plus {settle + tail} s)")
    points = sorted(rng.uniform(0, free) for _ in faults)
    out, used, prev = [], 0.0, 0.0
    for (k, d, r), p in zip(faults, points):
        used += p - prev
        prev = p
        at = settle + used
        out.append(f"{k}@{at:.1f}+{d}")
        used += d + r
    return out


def cut_schedule(seed, window, count, nodes, lease_ms, settle=3.0, tail=5.0):
    """`count` cuts of a random compute node's link, each past the lease by 2-3.5 s,
    at random times in [settle, window - tail]."""
    rng = random.Random(seed ^ 0xC07)
    down = lease_ms / 1000 + 3.5
    free = window - settle - tail - count * (down + 2.0)
    if free < 0:
        sys.exit(f"soak.py: {count} link cuts do not fit in a {window} s window")
    points = sorted(rng.uniform(0, free) for _ in range(count))
    out, used, prev = [], 0.0, 0.0
    for p in points:
        used += p - prev
        prev = p
        out.append(f"{settle + used:.1f} {down - round(rng.uniform(0, 1.5), 1):.1f} "
                   f"compute-{rng.randint(1, nodes)}")
        used += down + 2.0
    return out


# ----------------------------------------------------------------------------- sampling

def find_pid(token):
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if token.encode() in args:
            return int(d)
    return None


def proc_status(pid):
    """(VmRSS bytes, state letter) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    rss, state = 0, "?"
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("State:"):
            state = line.split()[1]
    return rss, state


def disk_usage(root):
    """Bytes on disk (allocated blocks) under `root`, total and per top-level entry."""
    parts = {}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0, parts
    for e in entries:
        n = 0
        try:
            if e.is_dir(follow_symlinks=False):
                for dirpath, _, files in os.walk(e.path):
                    for fn in files:
                        try:
                            n += os.lstat(os.path.join(dirpath, fn)).st_blocks * 512
                        except OSError:
                            pass  # removed while we walked (a redo segment)
            else:
                n = e.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
        parts[e.name] = n
    return sum(parts.values()), parts


def sample(args):
    services = []
    for s in args.service:
        role, data, token = s.split(":", 2)
        services.append({"role": role, "data": None if data == "-" else data,
                         "token": token, "pid": None})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    t0 = time.monotonic()
    k = 0
    with open(args.out, "a") as out:
        while not stop:
            row = {"unix_s": time.time(), "phase": args.phase, "services": {}}
            for s in services:
                st = proc_status(s["pid"]) if s["pid"] else None
                if st is not None and find_token(s["pid"], s["token"]) is False:
                    st = None  # the pid was reused by another process
                if st is None:
                    s["pid"] = find_pid(s["token"])
                    st = proc_status(s["pid"]) if s["pid"] else None
                rec = {"pid": s["pid"] if st else None,
                       "rss": st[0] if st else None,
                       "state": st[1] if st else "down"}
                if s["data"]:
                    rec["disk"], rec["disk_parts"] = disk_usage(s["data"])
                row["services"][s["role"]] = rec
            out.write(json.dumps(row) + "\n")
            out.flush()
            k += 1
            delay = t0 + k * args.interval - time.monotonic()
            while delay > 0 and not stop:
                time.sleep(min(delay, 0.2))
                delay = t0 + k * args.interval - time.monotonic()


def find_token(pid, token):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return token.encode() in f.read().split(b"\0")
    except OSError:
        return False


# ------------------------------------------------------------------------------ report

def load_lines(path):
    rows = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short by a kill
    return rows


def fmt_bytes(n):
    if n is None:
        return "-"
    if n >= 10 * (1 << 30):
        return f"{n / (1 << 30):.0f}G"
    if n >= 10 * MIB:
        return f"{n / MIB:.0f}M"
    if n >= MIB:
        return f"{n / MIB:.1f}M"
    return f"{n / 1024:.0f}K"


def short_fault(spec):
    """`kill:compute-2@10+2` -> `kill:compute-2`."""
    return spec.split("@", 1)[0]


def plateau(series, t0, t1, ratio, abs_floor, rel_floor):
    """The plateau rule (scripts/soak-test.sh's header). `series`: [(t, value)] with
    None values dropped. Returns a dict with the figures and `ok`."""
    pts = [(t, v) for t, v in series if t0 <= t <= t1 and v is not None]
    if len(pts) < 6:
        return {"ok": None, "why": f"only {len(pts)} samples in the steady part"}
    ts = t0 + (t1 - t0) * 2 / 3
    a = [v for t, v in pts if t <= ts]
    b = [v for t, v in pts if t > ts]
    if len(a) < 3 or len(b) < 2:
        return {"ok": None, "why": "too few samples in a part"}
    start = sorted(a[:3])[1]  # median of the first three: one odd sample does not count
    max_a, max_b = max(a), max(b)
    growth_a = max(0, max_a - start)
    growth_b = max(0, max_b - max_a)
    rate_a = growth_a / (ts - t0)
    allowed = max(abs_floor, rel_floor * max_a, ratio * rate_a * (t1 - ts))
    return {
        "ok": growth_b <= allowed,
        "start": start, "max_first": max_a, "max_last": max_b,
        "growth_first": growth_a, "growth_last": growth_b, "allowed_last": allowed,
        "rate_first_per_s": rate_a, "rate_last_per_s": growth_b / (t1 - ts),
    }


def compute_lives(mine, role, val, pool_at, w0, w1, life_warm):
    """A compute node's RSS series to judge, best first: `(series, t0, t1)` of its
    process's longest life in the window [w0, w1] (all its incarnations), then of its
    longest incarnation alone (for when the faults left the last one too short to
    judge the whole life by); empty if there are no samples.

    Each value is the RSS less the bytes of the buffer pool's page images then (bounded
    by the configuration; everything else is where a leak would be). A node that rejoins
    (a new epoch: the GTM restarted, or it was fenced) starts an empty pool in the same
    process while the old incarnation's images are still being freed, so the samples of
    each incarnation's first `life_warm` seconds are left out; the incarnations of one
    process are otherwise one series, so memory an old incarnation never gives back
    shows up as growth across rejoins."""
    started = {}  # (pid, epoch) -> its first sample
    lives = {}    # pid -> [(t, value)] of the samples past their incarnation's warm-up
    incs = {}     # (pid, epoch) -> the same, per incarnation
    for s in mine:
        pid = s["services"].get(role, {}).get("pid")
        t = s["unix_s"]
        at = pool_at(role, t)
        if pid is None or at is None or not (w0 <= t <= w1):
            continue
        first = started.setdefault((pid, at[1]), t)
        v = val(s)
        if v is None or t < max(first, w0) + life_warm:
            continue
        lives.setdefault(pid, []).append((t, v - at[0]))
        incs.setdefault((pid, at[1]), []).append((t, v - at[0]))

    def longest(groups):
        best = None
        for pts in groups.values():
            if best is None or pts[-1][0] - pts[0][0] > best[2] - best[1]:
                best = (pts, pts[0][0], pts[-1][0])
        return [best] if best else []
    return longest(lives) + longest(incs)


def report(args):
    out = args.out
    samples = load_lines(os.path.join(out, "samples.jsonl"))
    phases = []
    for p in args.phase:
        name, events, rep, status = p.split(":", 3)
        phases.append({"name": name, "events": load_lines(events),
                       "report": json.load(open(rep)) if os.path.exists(rep) else None,
                       "status": int(status) if status.lstrip("-").isdigit() else None})
    extra = load_lines(args.cut_events)  # link cuts, from the script
    if not samples:
        print("soak: no samples")
        return 1
    origin = samples[0]["unix_s"]
    roles = []
    for s in samples:
        for r in s["services"]:
            if r not in roles:
                roles.append(r)
    seconds, faults = [], []
    for ph in phases:
        for e in ph["events"]:
            if e.get("event") == "second":
                seconds.append((e["unix_s"], e["new_orders"], e.get("phase"), ph["name"]))
            elif e.get("event") == "fault" and e.get("state") == "struck":
                faults.append((e["unix_s"], short_fault(e["fault"]), ph["name"]))
    for e in extra:
        if e.get("state") == "struck":
            faults.append((e["unix_s"], short_fault(e["fault"]), "link-cut"))
    faults.sort()
    # Buffer-pool images per compute node (tpcc's `pool` events, every 5 s): a pool
    # filling up to its configured size is not growth to judge.
    pools = {}
    for ph in phases:
        for e in ph["events"]:
            if e.get("event") == "pool":
                pools.setdefault(f"compute-{e['node_id']}", []).append(
                    (e["unix_s"], e["resident"] * e["page_bytes"], e.get("epoch")))
    for v in pools.values():
        v.sort()

    def pool_at(role, t):
        """`(bytes of role's pool images, its epoch)` at `t`: the last report in
        [t - 12 s, t + 1 s] (None: no report near `t`). A sample between the last
        report of one epoch and the first of the next is the next one's: the node
        rejoined at some moment in between (reports come every 5 s), and from then on
        the old pool is being freed while the new one fills, which is that
        incarnation's warm-up, not the old one's steady state."""
        best = None
        for u, b, ep in pools.get(role, []):
            if u > t + 1.0:
                if best is not None and ep != best[1] and u <= t + 12.0:
                    return (b, ep)
                break
            if u >= t - 12.0:
                best = (b, ep)
        return best

    # Rows: one per table interval, from the first sample to the last.
    every = args.table_every
    t_end = samples[-1]["unix_s"]
    rows = []
    k = 0
    while origin + k * every <= t_end + 1e-6:
        lo, hi = origin + k * every, origin + (k + 1) * every
        k += 1
        ss = [s for s in samples if lo <= s["unix_s"] < hi]
        if not ss:
            continue
        last = ss[-1]
        secs = [x for x in seconds if lo <= x[0] < hi]
        tpm = sum(x[1] for x in secs) * 60.0 / len(secs) if secs else None
        phase = last["phase"]
        mine = [x[0] for x in seconds if x[3] == phase]
        if secs:
            phase += "/" + secs[-1][2]
        elif mine:
            phase += "/load" if hi <= mine[0] else "/check"
        fs = [f[1] for f in faults if lo <= f[0] < hi]
        row = {"t_s": round(last["unix_s"] - origin, 1), "unix_s": last["unix_s"],
               "phase": phase, "tpmC": tpm, "faults": fs, "services": {}}
        for r in roles:
            rec = last["services"].get(r, {})
            # RSS: the interval's largest (a short spike counts); disk: its last value.
            rss = [s["services"].get(r, {}).get("rss") for s in ss]
            rss = [v for v in rss if v is not None]
            row["services"][r] = {"disk": rec.get("disk"), "rss": max(rss) if rss else None,
                                  "pid": rec.get("pid"), "state": rec.get("state")}
        rows.append(row)

    disk_roles = [r for r in roles if any("disk" in s["services"].get(r, {}) for s in samples)]
    head = f"{'t s':>6} {'phase':<13} {'tpmC':>7} " + " ".join(
        f"{'disk ' + r:>13}" for r in disk_roles) + " " + " ".join(
        f"{'rss ' + r:>13}" for r in roles) + "  faults"
    print(head)
    with open(os.path.join(out, "soak.jsonl"), "w") as jf:
        for row in rows:
            jf.write(json.dumps(row) + "\n")
            sv = row["services"]
            cells = [f"{row['t_s']:>6.0f}", f"{row['phase']:<13}",
                     f"{row['tpmC']:>7.0f}" if row["tpmC"] is not None else f"{'-':>7}"]
            cells += [f"{fmt_bytes(sv[r]['disk']):>13}" for r in disk_roles]
            cells += [f"{fmt_bytes(sv[r]['rss']) + ('' if sv[r]['state'] not in ('T', 'down') else '(' + sv[r]['state'] + ')'):>13}"
                      for r in roles]
            cells.append("  " + ",".join(row["faults"]))
            print(" ".join(cells))

    bad = []
    # Lost orders, checks, tpcc's exit status.
    print()
    for ph in phases:
        r = ph["report"]
        if ph["status"] not in (0, None):
            bad.append(f"{ph['name']}: tpcc exited with status {ph['status']}")
        if r is None:
            bad.append(f"{ph['name']}: no tpcc report")
            continue
        run = r["run"]
        failed = [c for c in r["checks"] + r.get("checks_after_load", [])
                  if c["passed"] is not True and c["passed"] != "not_applicable"]
        lost = run.get("lost_new_orders")
        nf = len(run.get("faults") or [])
        print(f"{ph['name']:<8}: tpmC {r['tpmC']:.0f}, acknowledged New-Orders "
              f"{run['acknowledged_new_orders']}, lost {lost}, consistency checks "
              f"{'pass' if not failed else 'FAIL: ' + ', '.join(str(c.get('name', c.get('id'))) for c in failed)}"
              f", faults injected by tpcc {nf}, client downtime {run['client_downtime_s']:.1f}s")
        if lost != 0 and not (ph["name"] == "load" and lost is None):  # load: no orders
            bad.append(f"{ph['name']}: lost acknowledged New-Orders: {lost}")
        if failed:
            bad.append(f"{ph['name']}: consistency checks failed")

    # The plateau rule, on the main phase's measurement window.
    main = next((p for p in phases if p["name"] == args.plateau_phase), None)
    verdicts = []
    run_secs = [x[0] for x in seconds if x[3] == args.plateau_phase and x[2] == "run"]
    if main and run_secs:
        w0, w1 = run_secs[0] - 1.0, run_secs[-1]
        warm = args.plateau_warmup if args.plateau_warmup is not None else max(10.0, 0.15 * (w1 - w0))
        t0 = w0 + warm
        excluded = set(args.exclude_part or [])
        print(f"\nplateau rule over {t0 - origin:.0f}..{w1 - origin:.0f} s "
              f"(the {args.plateau_phase} window after {warm:.0f} s of warm-up): the last "
              f"third may add at most max({fmt_bytes(args.disk_floor)} disk / "
              f"{fmt_bytes(args.rss_floor)} RSS, {args.rel_floor:.0%} of the level, "
              f"{args.ratio} x the first two thirds' rate) above the first two thirds' peak")
        print(f"{'series':<26} {'start':>8} {'peak 2/3':>9} {'peak 1/3':>9} {'allowed':>9} {'B/s first':>10} {'B/s last':>9}  verdict")
        for r in roles:
            kinds = [("rss", args.rss_floor)]
            if r in disk_roles:
                kinds.insert(0, ("disk", args.disk_floor))
            for kind, floor in kinds:
                def val(s):
                    rec = s["services"].get(r, {})
                    if kind == "rss":
                        return rec.get("rss")
                    parts = rec.get("disk_parts", {})
                    return sum(v for p, v in parts.items() if f"{r}:{p}" not in excluded)
                mine = [s for s in samples if s["phase"] == args.plateau_phase]
                series = [(s["unix_s"], val(s)) for s in mine]
                s0, s1 = t0, w1
                v = None
                if kind == "rss" and r in pools:
                    series, s0, s1 = [], t0, t0
                    for cand in compute_lives(mine, r, val, pool_at, w0, w1, args.rss_life_warmup):
                        series, s0, s1 = cand
                        v = plateau(series, s0, s1, args.ratio, floor, args.rel_floor)
                        if v["ok"] is not None:
                            break
                elif kind == "rss":
                    # RSS starts again from nothing after a restart: judge the process's
                    # longest life within the span, a warm-up after it started.
                    lives = {}
                    for s in mine:
                        pid = s["services"].get(r, {}).get("pid")
                        if pid is not None:
                            lives.setdefault(pid, []).append(s["unix_s"])
                    best = None
                    for k, ts_ in lives.items():
                        a0 = t0 if ts_[0] <= w0 + 1.0 else max(t0, ts_[0] + warm)
                        a1 = min(w1, ts_[-1])
                        if a1 > a0 and (best is None or a1 - a0 > best[2] - best[1]):
                            best = (k, a0, a1)
                    if best is None:
                        best = (None, t0, t0)
                    series = [(s["unix_s"], val(s)) for s in mine
                              if best[0] is not None
                              and s["services"].get(r, {}).get("pid") == best[0]]
                    s0, s1 = best[1], best[2]
                if v is None:
                    v = plateau(series, s0, s1, args.ratio, floor, args.rel_floor)
                if kind == "rss" and v["ok"] is None and (s0, s1) != (t0, w1):
                    v = {"ok": "skip", "why": f"restarted; its longest life in the span is {s1 - s0:.0f} s"}
                name = f"{kind} {r}" + (" (w/o " + ",".join(e.split(':', 1)[1] for e in excluded if e.startswith(r + ':')) + ")"
                                        if kind == "disk" and any(e.startswith(r + ":") for e in excluded) else "")
                if kind == "rss" and r in pools:
                    name += " (w/o pool)"
                v["series"] = name
                verdicts.append(v)
                if v["ok"] == "skip":  # restarted too often to tell: said, not failed
                    print(f"{name:<26} {'':>8} {'':>9} {'':>9} {'':>9} {'':>10} {'':>9}  not judged ({v['why']})")
                    continue
                if v["ok"] is None:  # cannot judge: not a pass
                    print(f"{name:<26} {'':>8} {'':>9} {'':>9} {'':>9} {'':>10} {'':>9}  n/a ({v['why']})")
                    bad.append(f"{name}: plateau not judged ({v['why']})")
                    continue
                print(f"{name:<26} {fmt_bytes(v['start']):>8} {fmt_bytes(v['max_first']):>9} "
                      f"{fmt_bytes(v['max_last']):>9} {fmt_bytes(v['allowed_last']):>9} "
                      f"{v['rate_first_per_s']:>10.0f} {v['rate_last_per_s']:>9.0f}  "
                      f"{'levels off' if v['ok'] else 'GROWS'}")
                if not v["ok"]:
                    bad.append(f"{name} does not level off: +{fmt_bytes(v['growth_last'])} in the "
                               f"last third (allowed {fmt_bytes(v['allowed_last'])})")
        # The parts left out (the database's own growth), reported per New-Order.
        for e in sorted(excluded):
            r, part = e.split(":", 1)
            pts = [(s["unix_s"], s["services"].get(r, {}).get("disk_parts", {}).get(part))
                   for s in samples if s["phase"] == args.plateau_phase and t0 <= s["unix_s"] <= w1]
            pts = [p for p in pts if p[1] is not None]
            nos = sum(x[1] for x in seconds if x[3] == args.plateau_phase and t0 <= x[0] <= w1)
            if len(pts) >= 2 and nos:
                print(f"{'disk ' + e:<26} not judged (grows with the database): "
                      f"+{fmt_bytes(pts[-1][1] - pts[0][1])}, {(pts[-1][1] - pts[0][1]) / nos:.0f} B per New-Order")
    elif args.plateau_phase:
        bad.append(f"plateau: no measurement window of phase {args.plateau_phase}")

    with open(os.path.join(out, "plateau.json"), "w") as f:
        json.dump(verdicts, f, indent=1)
    write_svg(os.path.join(out, "soak.svg"), samples, seconds, faults, roles, disk_roles,
              origin, args.title)
    print(f"\nplot: {os.path.join(out, 'soak.svg')}; table rows: {os.path.join(out, 'soak.jsonl')}; "
          f"samples: {os.path.join(out, 'samples.jsonl')}")
    if bad:
        print("\nSOAK FAILED:")
        for b in bad:
            print("  " + b)
        return 1
    print("\nsoak passed: no lost order, checks pass, every judged series levels off")
    return 0


# --------------------------------------------------------------------------------- SVG

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def write_svg(path, samples, seconds, faults, roles, disk_roles, origin, title):
    W, left, right, ph, gap, top = 1000, 80, 150, 200, 50, 40
    t_max = max(samples[-1]["unix_s"] - origin, 1.0)
    panels = [("tpmC (per second, 5 s moving average)", None),
              ("disk (bytes on disk per data directory)", "disk"),
              ("RSS (VmRSS per process)", "rss")]
    H = top + len(panels) * (ph + gap) + 20
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>']
    pw = W - left - right

    def x_of(t):
        return left + pw * (t - origin) / t_max

    for i, (label, kind) in enumerate(panels):
        y0 = top + i * (ph + gap)
        lines = []
        if kind is None:
            pts = [(t, n * 60.0) for t, n, _, _ in seconds]
            sm = []
            for j in range(len(pts)):
                win = pts[max(0, j - 4):j + 1]
                sm.append((pts[j][0], sum(v for _, v in win) / len(win)))
            lines.append(("tpmC", sm))
        else:
            for r in (disk_roles if kind == "disk" else roles):
                lines.append((r, [(s["unix_s"], s["services"].get(r, {}).get(kind))
                                  for s in samples]))
        vmax = nice_max(max([v for _, pts in lines for _, v in pts if v is not None] or [1]))
        o.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        o.append(f'<text x="{left}" y="{y0 - 6}" font-size="12">{esc(label)}</text>')
        for g in range(5):
            v = vmax * g / 4
            y = y0 + ph - ph * g / 4
            txt = f"{v:.0f}" if kind is None else fmt_bytes(v)
            o.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            o.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{txt}</text>')
        step = nice_max(t_max / 10)
        t = 0.0
        while t <= t_max:
            x = left + pw * t / t_max
            o.append(f'<text x="{x:.1f}" y="{y0 + ph + 14}" text-anchor="middle">{t:.0f}s</text>')
            t += step
        for t, name, _ in faults:
            x = x_of(t)
            o.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + ph}" stroke="#f90" '
                     f'stroke-dasharray="3,3"><title>{esc(name)}</title></line>')
            if i == 0:
                o.append(f'<text x="{x + 2:.1f}" y="{y0 + 10}" font-size="9" fill="#c60" '
                         f'transform="rotate(90 {x + 2:.1f} {y0 + 10})">{esc(name)}</text>')
        for j, (name, pts) in enumerate(lines):
            c = COLORS[j % len(COLORS)]
            segs, cur = [], []
            for t, v in pts:
                if v is None:  # the process is down: a break in the line
                    if cur:
                        segs.append(cur)
                    cur = []
                    continue
                cur.append(f"{x_of(t):.1f},{y0 + ph - ph * min(v, vmax) / vmax:.1f}")
            if cur:
                segs.append(cur)
            for sg in segs:
                o.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{" ".join(sg)}"/>')
            o.append(f'<text x="{left + pw + 8}" y="{y0 + 14 + 14 * j}" fill="{c}">{esc(name)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("schedule")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--window", type=float, required=True)
    s.add_argument("--faults", type=int, required=True)
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument("--lease-ms", type=int, default=3000)
    s.add_argument("--settle", type=float, default=6.0)
    s.add_argument("--tail", type=float, default=6.0)
    c = sub.add_parser("cuts")
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--window", type=float, required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--nodes", type=int, default=2)
    c.add_argument("--lease-ms", type=int, default=3000)
    m = sub.add_parser("sample")
    m.add_argument("--out", required=True)
    m.add_argument("--interval", type=float, default=2.0)
    m.add_argument("--phase", required=True)
    m.add_argument("--service", action="append", default=[])
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--phase", action="append", default=[], help="NAME:EVENTS:REPORT:STATUS")
    r.add_argument("--cut-events")
    r.add_argument("--plateau-phase", default="main")
    r.add_argument("--plateau-warmup", type=float)
    r.add_argument("--rss-life-warmup", type=float, default=30.0,
                   help="seconds of each compute incarnation left out of its RSS series")
    r.add_argument("--ratio", type=float, default=0.5)
    r.add_argument("--disk-floor", type=float, default=256 * 1024)
    r.add_argument("--rss-floor", type=float, default=16 * MIB)
    r.add_argument("--rel-floor", type=float, default=0.02)
    r.add_argument("--exclude-part", action="append")
    r.add_argument("--table-every", type=float, default=5.0)
    r.add_argument("--title", default="soak")
    a = ap.parse_args()
    if a.cmd == "schedule":
        print("\n".join(fault_schedule(a.seed, a.window, a.faults, a.nodes, a.lease_ms,
                                       a.settle, a.tail)))
    elif a.cmd == "cuts":
        print("\n".join(cut_schedule(a.seed, a.window, a.count, a.nodes, a.lease_ms)))
    elif a.cmd == "sample":
        sample(a)
    else:
        sys.exit(report(a))


if __name__ == "__main__":
    main()
