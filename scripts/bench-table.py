#!/usr/bin/env python3
"""Turns a benchmark's JSON lines (stdin) into a Markdown table (stdout).

    cargo run --release -p common --bin fabric-bench -- --json --quick | scripts/bench-table.py
"""
import json
import sys

rows = [json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
if not rows:
    sys.exit("no JSON lines on stdin")
preferred = ["case", "op", "transport", "bytes", "batch", "threads", "batching",
             "max_in_flight", "ops_per_s", "p50_us", "p99_us", "requests_per_message",
             "round_trips_per_op", "commits_per_fsync", "speedup_vs_1"]
cols = [c for c in preferred if any(c in r for r in rows)]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    cells = []
    for c in cols:
        v = r.get(c, "")
        if isinstance(v, float):
            v = f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"
        cells.append(str(v))
    print("| " + " | ".join(cells) + " |")
