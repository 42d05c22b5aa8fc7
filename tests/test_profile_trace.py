"""A real torch.profiler window on a tiny model, parsed and attributed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from energy_flow.regions import REGION_PREFIX, REGIONS
from profiler.analyze.memory import attribution_check, owners
from profiler.analyze.window import window_tables
from profiler.collect.tracing import TraceSchedule, TraceSession
from profiler.collect.workload import make_energy_flow_workload
from profiler.parse.scan import scan_events
from profiler.parse.trace import (
    ScopeRules,
    attribute_memory,
    parse_trace,
    phase_marks,
    read_frames,
    read_trace,
)
from profiler.rundir import ALLOCATION_COLUMNS, MEMORY_COLUMNS, TENSOR_ROLES

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
    assert list(alloc.columns) == list(ALLOCATION_COLUMNS)
    assert set(alloc["role"]) <= set(TENSOR_ROLES)
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
