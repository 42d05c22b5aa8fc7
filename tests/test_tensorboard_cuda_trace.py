"""torch-tb-profiler 0.4.3 on a CUDA-shaped trace: kernels link to the operators that
launched them once ``patch_for_tensorboard`` gave Kineto's runtime events the category
the plugin knows. The plugin's own parser (``RunProfileData``) reads the trace."""

from __future__ import annotations

import copy
import gzip
import json

import pytest
from torch_tb_profiler.profiler.data import RunProfileData

from profiler.collect.tracing import ensure_distributed_info, patch_for_tensorboard
from profiler.parse.trace import read_trace

# the plugin's own pandas call warns under pandas 3; not ours to change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch_tb_profiler")


def cuda_trace() -> dict:
    """What Kineto writes for one step on a GPU: ProfilerStep, two operators, each launching
    one kernel through cudaLaunchKernel (correlation id -> kernel, External id -> operator)."""
    def op(name, ts, dur, ext):
        return {"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": 1, "ts": ts,
                "dur": dur, "args": {"External id": ext, "Input Dims": [[4, 4]]}}

    def launch(ts, corr, ext, cat="cuda_runtime", name="cudaLaunchKernel"):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": 5,
                "args": {"correlation": corr, "External id": ext}}

    def kernel(name, ts, corr, ext):
        return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts,
                "dur": 40, "args": {"correlation": corr, "External id": ext, "device": 0,
                                    "stream": 7, "grid": [1, 1, 1], "block": [128, 1, 1],
                                    "registers per thread": 32, "shared memory": 0}}

    events = [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#3", "pid": 1, "tid": 1,
         "ts": 1000, "dur": 400, "args": {"External id": 1}},
        op("aten::mm", 1010, 50, 2), launch(1020, 101, 2),
        op("aten::relu", 1100, 30, 3), launch(1110, 102, 3, "cuda_driver", "cuLaunchKernel"),
        kernel("ampere_sgemm_32x32_nn", 1030, 101, 2),
        kernel("vectorized_elementwise_kernel", 1120, 102, 3),
    ]
    return {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "NVIDIA H100"}],
            "traceEvents": events}


def kernel_owners(trace: dict) -> dict[str, str]:
    profile = RunProfileData.from_json("rank0", "1", copy.deepcopy(trace))
    table = profile.kernel_list_groupby_name_op
    return {k.name: k.op_name for k in table}


def test_kineto_runtime_categories_leave_kernels_at_the_root():
    owners = kernel_owners(cuda_trace())
    assert set(owners.values()) == {"CallTreeRoot"}  # the problem, as the plugin shows it


def test_patched_traces_link_every_kernel_to_its_operator():
    trace = cuda_trace()
    assert patch_for_tensorboard(trace) is True
    assert kernel_owners(trace) == {"ampere_sgemm_32x32_nn": "aten::mm",
                                    "vectorized_elementwise_kernel": "aten::relu"}
    runtime = [e for e in trace["traceEvents"] if e["cat"] == "Runtime"]
    assert [e["args"]["kineto category"] for e in runtime] == ["cuda_runtime", "cuda_driver"]
    assert patch_for_tensorboard(trace) is False  # idempotent


def test_the_trace_file_is_rewritten_once_and_stays_gzip(tmp_path):
    path = tmp_path / "rank0.1.pt.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps(cuda_trace()).encode()))
    assert ensure_distributed_info(path, read_trace(path)) is True
    patched = json.loads(gzip.decompress(path.read_bytes()))
    assert "distributedInfo" in patched
    assert {e["cat"] for e in patched["traceEvents"]} == {"user_annotation", "cpu_op",
                                                          "Runtime", "kernel"}
    assert ensure_distributed_info(path, read_trace(path)) is False
