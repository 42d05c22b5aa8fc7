"""A real torch.profiler window on a tiny model, parsed and attributed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from energy_flow.regions import REGION_PREFIX, REGIONS
from profiler.analyze.memory import attribution_check, category_stats, free_times, owners
from profiler.analyze.window import window_tables
from profiler.collect.tracing import TraceSchedule, TraceSession
from profiler.collect.workload import make_energy_flow_workload
from profiler.parse import fastscan
from profiler.parse.scan import scan_events, scan_header
from profiler.parse.trace import (
    ScopeRules,
    _nesting_sweep,
    attribute_memory,
    frames_of_columns,
    operator_table,
    parse_trace,
    phase_marks,
    read_frames,
    read_trace,
)
from profiler.rundir import ALLOCATION_COLUMNS, MEMORY_COLUMNS, PHASE_MARK_PREFIX, TENSOR_ROLES

ACTIVE = (2, 3)
RULES = ScopeRules(REGION_PREFIX, REGIONS)  # energy_flow's declared regions


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_config):
    run_dir = tmp_path_factory.mktemp("trace")
    device = torch.device("cpu")
    torch.manual_seed(0)
    workload = make_energy_flow_workload(tiny_config, device, "off")
    with TraceSession(run_dir, TraceSchedule(wait=1, warmup=1, active=2), device) as session:
        for i in range(5):
            workload.step(i, lambda name, i=i: session.mark_phase(name, i, workload.role_tensors()))
            session.step()
    assert len(session.files) == 1
    path = run_dir / session.files[0]
    frames = parse_trace(read_trace(path))
    return {"session": session, "path": path, "frames": frames, "workload": workload,
            "events": attribute_memory(frames, RULES), "device": device}


def test_trace_file_has_steps_memory_and_rank(traced):
    path = traced["path"]
    assert path.name.startswith("rank0.") and path.name.endswith(".pt.trace.json.gz")
    trace = json.loads(gzip.decompress(path.read_bytes()))
    assert trace["distributedInfo"]["rank"] == 0
    assert trace["distributedInfo"]["world_size"] == 1
    names = {e["name"] for e in trace["traceEvents"] if e.get("cat") == "user_annotation"}
    assert {f"ProfilerStep#{s}" for s in ACTIVE} <= names
    assert "ProfilerStep#1" not in names  # the profiler's warm-up step is discarded
    assert {"energy_flow.carrier", "energy_flow.neuron", "energy_flow.backward"} <= names


def test_memory_events_are_parsed_and_attributed(traced):
    ev = traced["events"]
    assert len(ev) > 200
    assert set(ev["device"]) == {"cpu"}
    assert set(ev["step"]) == set(ACTIVE)
    assert (ev["bytes"] > 0).any() and (ev["bytes"] < 0).any()
    assert set(ev["region"]) <= set(REGIONS) | {"other"}
    for region in ("mapper", "flow_init", "neuron", "carrier", "collect", "loss", "backward",
                   "optimizer"):
        assert (ev["region"] == region).any(), region
    allocs = ev[ev["bytes"] > 0]
    assert allocs["op"].str.startswith("aten::").mean() > 0.75  # frees often happen outside ops
    # inside the carrier scope the GRU's matrix products allocate
    carrier_ops = set(ev.loc[ev["region"] == "carrier", "op"])
    assert carrier_ops & {"aten::addmm", "aten::mm", "aten::linear", "aten::matmul",
                          "aten::_thnn_fused_gru_cell", "aten::gru_cell", "aten::empty"}


def test_categories_add_up_to_the_allocator_total(traced):
    ev = traced["events"].sort_values("ts_us", kind="stable")
    base = ev["total_allocated"].iloc[0] - ev["bytes"].iloc[0]
    # at every event, the running sum of attributed bytes equals the allocator's own total
    assert np.array_equal(ev["bytes"].cumsum().to_numpy(), (ev["total_allocated"] - base).to_numpy())
    check = attribution_check(ev, "region", "cpu", tolerance_bytes=0)
    assert check["ok"] and check["events"] == len(ev)
    assert sum(check["by_category"].values()) == check["allocator_total_bytes"]
    ev = ev.assign(owner=owners(ev, "region"))
    owned = attribution_check(ev, "owner", "cpu", tolerance_bytes=0)
    assert owned["ok"] and owned["sum_categories_bytes"] == check["allocator_total_bytes"]


def test_window_tables_roles_and_per_step_categories(traced):
    session, workload = traced["session"], traced["workload"]
    tables = window_tables([traced["frames"]], session.probes, "cpu", 0, RULES)
    alloc = tables.allocations
    assert list(alloc.columns) == [*ALLOCATION_COLUMNS, "owner_region"]
    assert set(alloc["role"]) <= set(TENSOR_ROLES)
    # a free is charged to the region of the allocation it releases
    assert set(alloc["owner_region"]) <= set(alloc["region"]) | {"other"}
    # gradients are re-created every step (zero_grad(set_to_none=True)): one per trainable
    # parameter, with the parameter's size
    trainable = [p for p in workload.trainer.model.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    grads = alloc[(alloc["role"] == "gradient") & (alloc["bytes"] > 0)]
    for step in ACTIVE:
        assert grads.loc[grads["step"] == step, "bytes"].sum() == grad_bytes
    acts = alloc[(alloc["role"] == "activation") & (alloc["bytes"] > 0)]
    assert set(acts["region"]) & {"neuron", "carrier"}
    assert (alloc["role"] == "temporary").any()
    by_cat = tables.memory_by_category
    assert list(by_cat.columns) == list(MEMORY_COLUMNS)
    assert set(by_cat["view"]) == {"region", "role"}
    assert set(by_cat["step"]) == set(ACTIVE)
    total = tables.attribution["allocator_total_bytes"]
    last = by_cat[by_cat["step"] == ACTIVE[-1]]
    for view in ("region", "role"):
        assert last.loc[last["view"] == view, "live_bytes"].sum() == total
    assert (by_cat["peak_bytes"] >= by_cat["live_bytes"]).all()
    carrier = by_cat[(by_cat["view"] == "region") & (by_cat["category"] == "carrier")]
    assert (carrier["alloc_count"] > 0).all() and (carrier["peak_bytes"] > 0).all()


def test_phase_marks_cover_every_recorded_step(traced):
    marks = phase_marks(traced["frames"].annotations)
    # in time order the markers run step by step, forward then backward then optimizer
    in_time = [(int(s), p) for s, p, _ in sorted(marks.itertuples(index=False, name=None),
                                                  key=lambda m: m[2])]
    assert in_time == [(s, p) for s in ACTIVE for p in ("forward", "backward", "optimizer")]
    got = {(int(s), p) for s, p in zip(marks["step"], marks["phase"], strict=True)}
    assert got == {(s, p) for s in ACTIVE for p in ("forward", "backward", "optimizer")}


def test_scanning_reads_the_same_frames_as_the_full_json_load(traced, tmp_path):
    path = traced["path"]
    full = parse_trace(read_trace(path))
    raw = gzip.decompress(path.read_bytes())
    assert scan_events(raw) is not None  # torch's layout: the fast path is taken
    fast = read_frames(path)
    for name in ("ops", "annotations", "memory"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(full, name), check_dtype=False)
    assert (fast.ops["seq"] >= 0).sum() > 100  # autograd sequence numbers read
    assert fast.metadata["distributedInfo"] == full.metadata["distributedInfo"]
    # another layout (compact JSON): the scanner declines and the full load answers
    compact = tmp_path / "compact.pt.trace.json"
    compact.write_text(json.dumps(read_trace(path), separators=(",", ":")))
    assert scan_events(compact.read_bytes()) is None
    pd.testing.assert_frame_equal(read_frames(compact).memory, full.memory)


def _frames_equal(a, b):
    for name in ("ops", "annotations", "memory", "kernels"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_native_scanner_reads_the_same_frames_as_the_full_json_load(traced, tmp_path):
    assert fastscan.unavailable() is None  # g++ is part of the set-up (as for the counter)
    path = traced["path"]
    trace = read_trace(path)
    raw = gzip.decompress(path.read_bytes())
    cols = fastscan.scan(raw)
    assert cols is not None
    header = scan_header(raw)
    _frames_equal(frames_of_columns(cols, header), parse_trace(trace))
    assert len(cols["m_ts"]) == sum(e.get("name") == "[memory]" for e in trace["traceEvents"])
    # a JSON reader, not a pattern: compact text with every event's keys reversed reads the
    # same, and so do escaped names, string thread ids and device activity (CUDA traces)
    events = [dict(reversed(list(e.items()))) for e in trace["traceEvents"]]
    op = next(e for e in events if e.get("cat") == "cpu_op")
    events += [
        {**op, "name": 'odd "name" \\ with, {brackets} [ ]', "tid": "thread A",
         "ts": op["ts"] + 0.5, "dur": 1.25},
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": op["ts"],
         "dur": 3.5, "args": {"External id": 42, "grid": [1, 2, 3]}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "pid": 0, "tid": 7,
         "ts": op["ts"], "dur": 0.75, "args": {"External id": 43}},
        {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 9,
         "ts": op["ts"], "args": {"Addr": 2**64 - 16, "Bytes": -512, "Device Type": 1,
                                  "Device Id": 0, "Total Allocated": 0,
                                  "Total Reserved": 0}},
    ]
    reordered = {**{k: v for k, v in trace.items() if k != "traceEvents"},
                 "traceEvents": events}
    text = json.dumps(reordered, separators=(",", ":")).encode()
    cols = fastscan.scan(text)
    assert cols is not None and scan_events(text) is None  # the regex scanner declines
    full = parse_trace(json.loads(text))
    _frames_equal(frames_of_columns(cols, {}), full)
    assert 'odd "name" \\ with, {brackets} [ ]' in set(full.ops["name"])
    assert list(full.kernels["ext"]) == [42, 43] and list(full.kernels["dur_us"]) == [3.5, 0.75]
    assert (full.memory["addr"] == -16).any()  # an address above 2**63 keeps its bits
    # input it cannot read: None (read_frames then falls back to the full load)
    for broken in (text[: len(text) // 2], text.replace(b'"ts":', b'"ts":x', 1), b"[]", b""):
        assert fastscan.scan(broken) is None


def _plain_innermost(starts, ends, labels, points):
    """Reference: per point, the last span (by start, outer first on ties) containing it."""
    order = sorted(range(len(starts)), key=lambda i: (starts[i], -ends[i]))
    out = []
    for t in points:
        inside = [i for i in order if starts[i] <= t <= ends[i]]
        out.append(labels[inside[-1]] if inside else None)
    return out


def _plain_owners_and_frees(ev):
    """Reference: walk the events in time order, one dict of open blocks."""
    owner, freed_at, open_blocks = {}, {}, {}
    for idx, row in ev.sort_values("ts_us", kind="stable").iterrows():
        key = (row["device"], row["addr"])
        if row["bytes"] > 0:
            owner[idx] = row["region"]
            open_blocks[key] = idx
        else:
            alloc = open_blocks.pop(key, None)
            owner[idx] = ev.at[alloc, "region"] if alloc is not None else "other"
            if alloc is not None:
                freed_at[alloc] = row["ts_us"]
    return owner, freed_at


def _plain_category_stats(ev, category, steps):
    """Reference: per category, a running sum of bytes; per step its end and high point."""
    rows, live = {}, {}
    for _, row in ev.sort_values("ts_us", kind="stable").iterrows():
        cat, step, b = row[category], row["step"], int(row["bytes"])
        live[cat] = live.get(cat, 0) + b
        cell = rows.setdefault((cat, step), {"high": live[cat], "n_alloc": 0, "n_free": 0,
                                             "alloc": 0, "free": 0})
        cell["high"] = max(cell["high"], live[cat])
        cell["live"] = live[cat]
        cell["n_alloc" if b > 0 else "n_free"] += 1
        cell["alloc" if b > 0 else "free"] += abs(b)
    out = {}
    for cat in {c for c, _ in rows}:
        carried = 0
        for step in steps:
            cell = rows.get((cat, step))
            if cell is None:
                out[(cat, step)] = (carried, carried, 0, 0, 0, 0)
                continue
            out[(cat, step)] = (cell["live"], max(carried, cell["high"]), cell["n_alloc"],
                                cell["alloc"], cell["n_free"], cell["free"])
            carried = cell["live"]
    return out


def test_vectorized_attribution_equals_the_plain_loops(traced):
    frames, ev = traced["frames"], traced["events"]
    # innermost operator of every memory event, on each thread
    for tid, mem in ev.groupby("tid"):
        ops = frames.ops[frames.ops["tid"] == tid]
        plain = _plain_innermost(ops["ts_us"].tolist(), ops["end_us"].tolist(),
                                 ops["name"].tolist(), mem["ts_us"].tolist())
        assert mem["op"].tolist() == [o or "" for o in plain]
        assert sum(o is not None for o in plain) > len(mem) / 2
    # self time: the plain stack sweep over the same spans (no device time on CPU)
    table = operator_table(frames).set_index("name")
    notes = frames.annotations
    spans = pd.concat([frames.ops, notes[~notes["name"].str.startswith(
        ("ProfilerStep#", PHASE_MARK_PREFIX))]], ignore_index=True)
    order = np.lexsort((-spans["dur_us"].to_numpy(), spans["ts_us"].to_numpy()))
    child, _ = _nesting_sweep(order, spans["tid"].to_numpy(), spans["ts_us"].tolist(),
                              spans["end_us"].tolist(), spans["dur_us"].tolist(),
                              [0.0] * len(spans))
    self_us = (spans["dur_us"] - np.asarray(child)).groupby(spans["name"]).sum()
    assert table["self_us"].to_dict() == self_us.to_dict()
    assert (table["self_us"] < table["total_us"]).any()
    # owners and free times: one walk over the events in time order
    owner, freed_at = _plain_owners_and_frees(ev)
    assert owners(ev, "region").to_dict() == owner
    frees = free_times(ev)
    assert frees.dropna().to_dict() == freed_at and len(freed_at) > 100
    # per-step category stats: running sums
    ev = ev.assign(owner_region=owners(ev, "region"))
    steps = sorted(ev["step"].unique())
    stats = category_stats(ev, "owner_region", "region", steps, ["zero", "other"])
    plain = _plain_category_stats(ev, "owner_region", steps)
    columns = ["live_bytes", "peak_bytes", "alloc_count", "alloc_bytes", "free_count",
               "free_bytes"]
    got = {(r.category, r.step): tuple(getattr(r, c) for c in columns)
           for r in stats.itertuples()}
    assert {k: v for k, v in got.items() if k[0] != "zero"} == plain
    assert got[("zero", steps[-1])] == (0, 0, 0, 0, 0, 0)
