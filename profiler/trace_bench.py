"""Trace post-processing speed: ``python -m profiler.trace_bench RUN_DIR [--repeats N]``.

Times what ``profile`` does with a finished trace window — read the needed events
(``read_frames``: gunzip, scan), attribute every allocator event (``window_tables``:
allocations, per-category stats, operators, the sum check) and format the three CSV files
(in memory) — and prints the median wall and CPU seconds and allocator events per second.
CPU seconds (this process) are less distorted by other jobs on a loaded machine. Set
``OMP_NUM_THREADS``; the trace files are only read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from profiler.analyze.window import window_tables
from profiler.collect.writer import csv_text
from profiler.parse import fastscan
from profiler.parse.trace import ScopeRules, parse_trace, read_frames, read_trace
from profiler.rundir import (
    ALLOCATION_COLUMNS,
    MEMORY_COLUMNS,
    OPERATOR_COLUMNS,
    run_json_path,
    trace_files,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiler.trace_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    paths = trace_files(args.run_dir)
    if not paths:
        parser.error(f"no trace file in {args.run_dir}")
    meta = json.loads(run_json_path(args.run_dir).read_text())
    rules = ScopeRules.from_json((meta.get("attribution") or {}).get("scopes"))
    device = "cpu" if meta["device"]["type"] == "cpu" else f"cuda:{meta['device'].get('index', 0)}"
    size = sum(p.stat().st_size for p in paths)
    read_s, parse_s, total_s, cpu_s, events = [], [], [], [], 0  # read/parse: full json load
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        traces = [read_trace(p) for p in paths]
        t1 = time.perf_counter()
        for trace in traces:
            parse_trace(trace)
        t2, c2 = time.perf_counter(), time.process_time()
        tables = window_tables([read_frames(p) for p in paths], {}, device, 1 << 62, rules)
        csv_text(tables.allocations, ALLOCATION_COLUMNS)
        csv_text(tables.operators, OPERATOR_COLUMNS)
        csv_text(tables.memory_by_category, MEMORY_COLUMNS)
        t3, c3 = time.perf_counter(), time.process_time()
        cpu_s.append(c3 - c2)
        read_s.append(t1 - t0)
        parse_s.append(t2 - t1)
        total_s.append(t3 - t2)
        events = len(tables.allocations)
    median, cpu = statistics.median(total_s), statistics.median(cpu_s)
    why_not = fastscan.unavailable()
    print("scanner: " + ("native (profiler/parse/native/trace_scan.cpp)" if why_not is None
                         else f"regular expressions ({why_not})"))
    print(f"{len(paths)} trace file(s), {size / 2**20:.1f} MiB compressed, {events} allocator "
          f"events; medians of {args.repeats}: full json read {statistics.median(read_s):.3f} s, "
          f"parse {statistics.median(parse_s):.3f} s; post-processing (read_frames, "
          f"window_tables, CSV text) {median:.3f} s wall = {events / median:,.0f} allocator "
          f"events/s, {cpu:.3f} s CPU = {events / cpu:,.0f} allocator events/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
