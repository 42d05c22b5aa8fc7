"""A real torch.profiler window on a tiny model, parsed and attributed."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from energy_flow.config import make_config
from profiler.analyze.memory import attribution_check, owners
from profiler.collect.tracing import TraceSchedule, TraceSession, window_tables
from profiler.collect.workload import make_energy_flow_workload
from profiler.parse.trace import attribute_memory, parse_trace, phase_marks, read_trace
from profiler.rundir import ALLOCATION_COLUMNS, MEMORY_COLUMNS, MODEL_REGIONS, TENSOR_ROLES

TINY = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2,
            carrier_hidden=16, carrier_layers=1, mapper_hidden=32, max_flows=1000)
ACTIVE = (2, 3)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trace")
    device = torch.device("cpu")
    torch.manual_seed(0)
    workload = make_energy_flow_workload(make_config("debug", **TINY), device, "off")
    with TraceSession(run_dir, TraceSchedule(wait=1, warmup=1, active=2), device) as session:
        for i in range(5):
            workload.step(i, lambda name, i=i: session.mark_phase(name, i, workload.role_tensors()))
            session.step()
    assert len(session.files) == 1
    path = run_dir / session.files[0]
    frames = parse_trace(read_trace(path))
    return {"session": session, "path": path, "frames": frames, "workload": workload,
            "events": attribute_memory(frames), "device": device}


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
    assert set(ev["region"]) <= set(MODEL_REGIONS) | {"other"}
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
    tables = window_tables([traced["path"]], session.probes, traced["device"], 0)
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
    assert sorted(marks.itertuples(index=False, name=None), key=lambda m: m[2]) == sorted(
        marks.itertuples(index=False, name=None), key=lambda m: m[2])
    got = {(int(s), p) for s, p in zip(marks["step"], marks["phase"], strict=True)}
    assert got == {(s, p) for s in ACTIVE for p in ("forward", "backward", "optimizer")}
