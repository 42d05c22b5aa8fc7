"""Pure parts of the profile pipeline on hand-made frames, with exact expected values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from profiler.analyze.memory import (
    assign_roles,
    category_stats,
    free_times,
    memory_growth,
    owners,
)
from profiler.parse.trace import (
    ScopeRules,
    TraceFrames,
    attribute_memory,
    innermost,
    operator_table,
    parse_trace,
)

MAIN, AUTOGRAD = 1, 2
ENERGY_FLOW = ScopeRules("energy_flow.", ("mapper", "neuron", "carrier", "backward"))


def spans(rows):
    df = pd.DataFrame(rows, columns=["name", "tid", "ts_us", "dur_us"])
    df["end_us"] = df["ts_us"] + df["dur_us"]
    return df


def memory(rows):
    return pd.DataFrame(rows, columns=["ts_us", "tid", "bytes", "total_allocated", "device", "addr"])


def test_innermost_picks_the_latest_enclosing_span():
    starts = np.array([0.0, 10.0, 12.0, 30.0])
    ends = np.array([100.0, 20.0, 15.0, 40.0])
    got = innermost(starts, ends, ["a", "b", "c", "d"],
                    np.array([5.0, 11.0, 13.0, 15.0, 17.0, 35.0, 50.0, 120.0]))
    assert got == ["a", "b", "c", "c", "b", "d", "a", None]


def test_region_attribution_same_thread_and_backward_threads():
    notes = spans([
        ("ProfilerStep#7", MAIN, 0, 100),
        ("energy_flow.carrier", MAIN, 10, 20),
        ("energy_flow.neuron", MAIN, 12, 5),   # nested inside carrier
        ("energy_flow.backward", MAIN, 50, 30),
        ("unrelated scope", MAIN, 85, 5),
    ])
    ops = spans([("aten::mm", MAIN, 13, 2), ("aten::add", AUTOGRAD, 60, 2)])
    mem = memory([
        (14, MAIN, 64, 64, "cpu", 1),        # neuron (innermost), in aten::mm
        (25, MAIN, 32, 96, "cpu", 2),        # carrier
        (40, MAIN, -64, 32, "cpu", 1),       # no region -> other
        (61, AUTOGRAD, 16, 48, "cuda:0", 3),  # autograd thread inside the backward window
        (86, MAIN, 8, 56, "cpu", 4),         # a non-region scope -> other
        (95, AUTOGRAD, 8, 64, "cuda:0", 5),  # autograd thread after backward -> other
    ])
    ev = attribute_memory(TraceFrames(ops, notes, mem, {}), ENERGY_FLOW)
    assert ev["region"].tolist() == ["neuron", "carrier", "other", "backward", "other", "other"]
    assert ev["op"].tolist() == ["aten::mm", "", "", "aten::add", "", ""]
    assert ev["step"].tolist() == [7] * 6


def test_modules_user_scopes_and_backward_nodes_by_sequence_number():
    notes = spans([
        ("ProfilerStep#3", MAIN, 0, 200),
        ("profiler.phase.forward", MAIN, 1, 60),
        ("module::encoder", MAIN, 2, 40),
        ("module::encoder.layers.0", MAIN, 5, 20),
        ("my_scope", MAIN, 45, 10),          # a user's record_function scope
        ("Optimizer.step#AdamW.step", MAIN, 150, 20),  # torch's own: not a category
        ("profiler.phase.backward", MAIN, 70, 60),
    ])
    ops = spans([
        ("aten::mm", MAIN, 6, 3), ("aten::relu", MAIN, 30, 2), ("aten::mul", MAIN, 46, 2),
        ("autograd::engine::evaluate_function: MmBackward0", MAIN, 80, 10),
        ("autograd::engine::evaluate_function: ReluBackward0", AUTOGRAD, 95, 10),
        ("autograd::engine::evaluate_function: MulBackward0", MAIN, 110, 5),
        ("autograd::engine::evaluate_function: AddBackward0", MAIN, 120, 5),
    ])
    ops["seq"] = [11, 12, 13, 11, 12, 13, 99]  # 99: no forward op in the window
    ops["fwd_tid"] = [-1, -1, -1, 1, 1, 1, 1]
    mem = memory([
        (7, MAIN, 64, 64, "cpu", 1),        # mm inside encoder.layers.0
        (31, MAIN, 32, 96, "cpu", 2),       # relu inside encoder
        (47, MAIN, 16, 112, "cpu", 3),      # mul inside the user's scope
        (58, MAIN, 8, 120, "cpu", 4),       # forward phase, outside any module
        (85, MAIN, 64, 184, "cpu", 5),      # MmBackward0 -> its forward module
        (100, AUTOGRAD, 32, 216, "cpu", 6),  # ReluBackward0 on another thread -> encoder
        (112, MAIN, 16, 232, "cpu", 7),     # MulBackward0 -> the user's scope
        (122, MAIN, 4, 236, "cpu", 8),      # unknown node: the enclosing backward phase
        (160, MAIN, 8, 244, "cpu", 9),      # optimizer: no scope -> other
    ])
    ev = attribute_memory(TraceFrames(ops, notes, mem, {}), ScopeRules())
    assert ev["region"].tolist() == [
        "encoder.layers.0", "encoder", "my_scope", "forward", "encoder.layers.0", "encoder",
        "my_scope", "backward", "other"]
    # with a workload's declared prefix only its scopes (and modules, phases) count
    ev = attribute_memory(TraceFrames(ops, notes, mem, {}), ScopeRules("energy_flow.", ()))
    assert ev["region"].tolist()[:4] == ["encoder.layers.0", "encoder", "forward", "forward"]


def test_owners_and_free_times_pair_blocks_by_address():
    ev = pd.DataFrame({
        "ts_us": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "bytes": [100, 50, -100, 100, -30, -100],
        "device": ["cpu"] * 6,
        "addr": [1, 2, 1, 1, 9, 1],  # address 1 is reused; address 9 was allocated earlier
        "region": ["carrier", "neuron", "backward", "spawn", "loss", "optimizer"],
    })
    assert owners(ev, "region").tolist() == ["carrier", "neuron", "carrier", "spawn", "other",
                                             "spawn"]
    ft = free_times(ev)
    assert ft.tolist()[0] == 3.0 and ft.tolist()[3] == 6.0
    assert np.isnan(ft.tolist()[1])


def test_category_stats_live_peak_counts():
    ev = pd.DataFrame({
        "ts_us": [1, 2, 3, 4, 5, 6], "step": [0, 0, 0, 1, 1, 1],
        "bytes": [100, 50, -100, 30, -50, -30],
        "cat": ["a", "a", "a", "a", "a", "b"],
    })
    df = category_stats(ev, "cat", "region", [0, 1], ["a", "b", "c"]).set_index(["step", "category"])
    assert df.loc[(0, "a"), ["live_bytes", "peak_bytes", "alloc_count", "alloc_bytes",
                             "free_count", "free_bytes"]].tolist() == [50, 150, 2, 150, 1, 100]
    assert df.loc[(1, "a"), ["live_bytes", "peak_bytes"]].tolist() == [30, 80]
    assert df.loc[(1, "b"), ["live_bytes", "peak_bytes", "free_bytes"]].tolist() == [-30, 0, 30]
    assert df.loc[(0, "c"), ["live_bytes", "alloc_count"]].tolist() == [0, 0]
    assert df.groupby("step")["live_bytes"].sum().tolist() == [50, 0]


def test_roles_from_probes_and_phases():
    marks = pd.DataFrame({"step": [0, 0, 0], "phase": ["forward", "backward", "optimizer"],
                          "ts_us": [10.0, 20.0, 30.0]})
    ev = pd.DataFrame({
        "ts_us": [1.0, 2.0, 3.0, 12.0, 14.0, 15.0, 18.0, 25.0, 26.0],
        "step": [0] * 9,
        "bytes": [64, 32, -32, 16, -64, 8, 128, -8, -16],
        "device": ["cpu"] * 9,
        "addr": [1, 2, 2, 3, 1, 4, 5, 4, 3],
    })
    # address 5 is a gradient at the backward probe (t = 20); address 3 is not listed
    roles = assign_roles(ev, marks, [(20.0, {5: "gradient"}), (30.0, {})])
    assert roles.tolist() == ["activation", "temporary", "temporary", "other", "activation",
                              "other", "gradient", "other", "other"]


def steps_frame(values, column="allocated_bytes", warmup=2):
    n = len(values)
    return pd.DataFrame({"step": range(n), "phase": ["warmup"] * warmup + ["measured"] * (n - warmup),
                         column: values})


def test_memory_growth_stable_leak_and_rss_fallback():
    rng = np.random.default_rng(0)
    flat = [5e9, 1e9] + list(1e8 + rng.integers(-4096, 4096, 200))
    g = memory_growth(steps_frame(flat))
    assert g["verdict"] == "stable" and g["metric"] == "allocated_bytes" and g["steps"] == 150
    assert abs(g["growth_bytes_per_step"]) < 100
    leaking = [0, 0] + [1e8 + 64 * 1024 * i for i in range(200)]
    g = memory_growth(steps_frame(leaking))
    assert g["verdict"] == "leak"
    assert abs(g["growth_bytes_per_step"] - 64 * 1024) < 1
    rss = steps_frame([1e9 + 1e6 * i for i in range(50)], column="rss_bytes")
    rss["allocated_bytes"] = None
    g = memory_growth(rss)
    assert g["metric"] == "rss_bytes" and g["verdict"] == "leak"
    assert memory_growth(steps_frame([1, 2, 3, 4]))["verdict"] == "insufficient data"
    # early growth that plateaus (allocator settling) is not a leak
    settling = [0, 0] + [1e9 + 8e6 * min(i, 30) for i in range(200)]
    g = memory_growth(steps_frame(settling))
    assert g["verdict"] == "stable" and abs(g["growth_bytes_per_step"]) < 1e-3


def test_operator_table_self_total_and_device_times_from_the_trace():
    def op(name, ts, dur, ext, tid=MAIN):
        return {"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": tid, "ts": ts,
                "dur": dur, "args": {"External id": ext}}

    trace = {"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#4", "pid": 1, "tid": MAIN,
         "ts": 0, "dur": 100, "args": {}},
        {"ph": "X", "cat": "user_annotation", "name": "my_scope", "pid": 1, "tid": MAIN,
         "ts": 5, "dur": 50, "args": {}},
        op("aten::linear", 10, 30, 1), op("aten::addmm", 12, 20, 2), op("aten::mm", 60, 10, 3),
        op("aten::mm", 80, 6, 4, tid=AUTOGRAD),
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 15, "dur": 4,
         "args": {"External id": 2}},
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 62, "dur": 3,
         "args": {"External id": 3}},
    ]}
    table = operator_table(parse_trace(trace)).set_index("name")
    assert table.loc["my_scope", "self_us"] == 20 and table.loc["my_scope", "total_us"] == 50
    assert table.loc["aten::linear", "self_us"] == 10 and table.loc["aten::addmm", "self_us"] == 20
    assert table.loc["aten::mm", "count"] == 2 and table.loc["aten::mm", "total_us"] == 16
    assert table.loc["aten::addmm", "self_device_us"] == 4
    assert table.loc["aten::linear", "self_device_us"] == 0
    assert table.loc["aten::linear", "total_device_us"] == 4
    assert table.loc["my_scope", "total_device_us"] == 4
    assert table.loc["aten::mm", "self_device_us"] == 3
    assert "ProfilerStep#4" not in table.index
    assert list(table.index[:2]) == ["my_scope", "aten::linear"]  # largest total first
