"""GPU-marked tests of the CUDA paths (skipped without CUDA; ``make gpu-check`` runs them and
fails if any skips): a real OOM, the sync budget, memory history only where asked, the
TensorBoard views of a CUDA run, the pool bench's identical losses, a large-N step, and the
cudaMallocAsync variant. NVML identity and the CUDA_VISIBLE_DEVICES variant: test_nvml.py."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest
import torch

from profiler.gpucheck import (
    OomWorkload,
    count_syncs,
    history_is_off,
    run_session,
    snapshot_has_stacks,
)
from profiler.rundir import RUN_JSON

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda:0")


@pytest.mark.parametrize("mode", ["full", "light"])
def test_a_real_cuda_oom_is_recorded_with_stacks(tmp_path, mode):
    from profiler.collect.tracing import TraceSchedule

    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(CUDA)
    trace = TraceSchedule(wait=0, warmup=1, active=60) if mode == "full" else None
    meta = run_session(tmp_path / mode, mode, 60, factory=OomWorkload, trace=trace)
    assert meta["status"] == "oom", meta["error"]
    state = meta["memory_at_failure"]
    assert state["allocator"]["num_ooms"] >= 1
    assert state["device_total_bytes"] > state["device_free_bytes"] >= 0
    assert state["snapshot"] == "cuda_memory_snapshot.pickle"
    assert state["snapshot_python_stacks"] is True
    assert snapshot_has_stacks(tmp_path / mode / "cuda_memory_snapshot.pickle")
    history = meta["memory_history"]
    assert history["unavailable"] is None
    if mode == "light":
        assert history["guard_armed_at_step"] is not None  # the guard armed before the OOM
    assert history_is_off(CUDA)
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated(CUDA) == baseline


def test_full_mode_records_history_only_in_the_trace_window(tmp_path):
    from profiler.collect.tracing import TraceSchedule

    meta = run_session(tmp_path / "w", "full", 8, trace=TraceSchedule(wait=2, warmup=1, active=2))
    assert meta["status"] == "complete", meta["error"]
    assert meta["memory_history"]["windows"] == 1
    assert meta["memory_history"]["guard_armed_at_step"] is None
    assert snapshot_has_stacks(tmp_path / "w" / "cuda_memory_snapshot.pickle")
    assert history_is_off(CUDA)


def test_host_syncs_per_forward_are_lattice_steps_plus_one():
    from energy_flow.config import make_config
    from energy_flow.data import SyntheticPairs
    from energy_flow.model import EnergyFlowModel

    config = make_config("debug")
    model = EnergyFlowModel(config).to(CUDA)
    inputs, targets = SyntheticPairs(config.embedding_dim, seed=1).batch(config.batch_size, 0,
                                                                         CUDA)
    model(inputs, targets)
    syncs, out = count_syncs(lambda: model(inputs, targets))
    assert out.stats.steps_taken >= 1
    assert syncs == out.stats.steps_taken + 1


def test_region_categories_add_up_exactly_on_cuda(tmp_path):
    meta = run_session(tmp_path / "c", "full", 6, tolerance_bytes=0)
    att = meta["attribution"]
    assert meta["status"] == "complete" and att["device"] == "cuda:0"
    assert att["events"] > 0 and att["sum_categories_bytes"] == att["allocator_total_bytes"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch_tb_profiler")
def test_tensorboard_links_the_kernels_of_a_cuda_run_to_operators(tmp_path):
    from torch_tb_profiler.profiler.data import RunProfileData

    from profiler.parse.trace import read_trace

    meta = run_session(tmp_path / "tb", "full", 6)
    assert meta["status"] == "complete", meta["error"]
    [name] = meta["trace"]["files"]
    trace = read_trace(tmp_path / "tb" / name)
    cats = {e.get("cat") for e in trace["traceEvents"]}
    assert "Runtime" in cats and "kernel" in cats and "cuda_runtime" not in cats
    profile = RunProfileData.from_json("rank0", "1", trace)
    kernels = profile.kernel_list_groupby_name_op
    total = sum(k.total_duration for k in kernels)
    at_root = sum(k.total_duration for k in kernels if k.op_name == "CallTreeRoot")
    assert total > 0 and at_root / total < 0.05, {k.op_name for k in kernels}
    assert any(k.op_name.startswith("aten::") for k in kernels)


def test_pool_kinds_train_to_identical_losses_on_cuda():
    from profiler.memory.bench import BenchConfig, run_train

    bench = BenchConfig(sections=("train",), presets=("debug",),
                        overrides={"debug": dict(lattice_width=8, lattice_height=8,
                                                 batch_size=2)},
                        kinds=("off", "simple", "managed"), device="cuda:0", warmup=1, steps=3)
    result = run_train(bench, "debug")
    assert result["identical_losses"] is True


def test_a_large_n_training_step(make_tiny):
    from energy_flow.data import SyntheticPairs
    from energy_flow.trainer import Trainer

    config = make_tiny(lattice_width=128, lattice_height=128, batch_size=16,
                       max_flows=600_000, carrier_hidden=64)
    trainer = Trainer(config, CUDA)
    inputs, targets = SyntheticPairs(config.embedding_dim, seed=3).batch(16, 0, CUDA)
    result = trainer.train_step(inputs, targets)
    assert result.flows_created >= 128 * 128 * 16  # 262,144 initial flows
    assert not result.skipped and result.loss > 0


def test_cuda_malloc_async_runs_full_mode_without_history(tmp_path, tiny_sets):
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync",
           "OMP_NUM_THREADS": "2"}
    sets = tiny_sets
    proc = subprocess.run([sys.executable, "-m", "profiler", "profile", "--device", "cuda",
                           "--mode", "full", "--steps", "6", "--name", "async", "--out",
                           str(tmp_path), *sets], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "async" / RUN_JSON).read_text())
    assert meta["status"] == "complete"
    assert meta["environment"]["PYTORCH_CUDA_ALLOC_CONF"] == "backend:cudaMallocAsync"
    assert "cudaMallocAsync" in meta["memory_history"]["unavailable"]
    assert not (tmp_path / "async" / "cuda_memory_snapshot.pickle").exists()
