"""MemoryMonitor (real process / cgroup / CUDA readings), MemoryOptimizer, MemoryProfiler."""

import time

import psutil
import pytest
import torch

from profiler.memory import (
    MemoryMonitor,
    MemoryOptimizer,
    MemoryPriority,
    MemoryProfiler,
    MonitorConfig,
    SimpleMemoryPool,
    UnifiedMemoryManager,
)
from profiler.memory.monitor import cgroup_limit_bytes


def _meminfo_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_cpu_pressure_is_rss_over_the_limit():
    monitor = MemoryMonitor(MonitorConfig(), device="cpu")
    pressure = monitor.check_memory_pressure()
    rss = psutil.Process().memory_info().rss
    limit = cgroup_limit_bytes() or _meminfo_total()
    assert monitor.last.limit_bytes == limit
    assert monitor.last.source in ("process-rss/cgroup", "process-rss/ram")
    assert 0.0 < pressure < 1.0
    assert pressure == pytest.approx(rss / limit, rel=0.2)
    assert list(monitor.alerts) == []


def test_alerts_follow_the_configured_thresholds():
    current = MemoryMonitor(device="cpu").check_memory_pressure()
    moderate = MemoryMonitor(MonitorConfig(moderate_threshold=current / 4, critical_threshold=1.0))
    critical = MemoryMonitor(MonitorConfig(moderate_threshold=current / 8,
                                           critical_threshold=current / 4))
    before = time.time()
    moderate.check_memory_pressure()
    critical.check_memory_pressure()
    (a,), (b,) = moderate.alerts, critical.alerts
    assert a.level == "moderate" and b.level == "critical"
    assert before <= b.ts <= time.time() and b.pressure > current / 4
    assert "critical" in b.message and b.source.startswith("process-rss")


def test_optimizer_trims_under_moderate_and_empties_under_critical_pressure():
    current = MemoryMonitor().check_memory_pressure()

    def filled() -> tuple[UnifiedMemoryManager, SimpleMemoryPool]:
        m, p = UnifiedMemoryManager(), SimpleMemoryPool()
        held = [m.acquire_tensor(100, category="c", **kw)
                for kw in ({"lifetime": "cached"}, {"priority": MemoryPriority.LOW}, {}, {})]
        for t in held:
            m.release_tensor(t)
        ts = [p.get_tensor(50) for _ in range(3)]
        for t in ts:
            p.return_tensor(t)
        return m, p

    m, p = filled()
    ok = MemoryOptimizer(MemoryMonitor(MonitorConfig(moderate_threshold=1.0, critical_threshold=1.0)), [m, p])
    assert ok.optimize().level == "ok" and m.held_bytes() == 4 * 400

    m, p = filled()
    mod = MemoryOptimizer(MemoryMonitor(MonitorConfig(moderate_threshold=current / 4,
                                                      critical_threshold=1.0)), [m, p])
    rec = mod.optimize()
    assert rec.level == "moderate"
    assert rec.freed_bytes == 2 * 400 + 2 * 200  # cached + low-priority; simple pool to 1 per key
    assert m.held_bytes() == 2 * 400 and p.stats()["held_bytes"] == 200

    m, p = filled()
    crit = MemoryOptimizer(MemoryMonitor(MonitorConfig(moderate_threshold=current / 8,
                                                       critical_threshold=current / 4)), [m, p])
    rec = crit.optimize()
    assert rec.level == "critical" and "gc.collect" in rec.actions
    assert m.held_bytes() == 0 and p.stats()["held_bytes"] == 0
    assert crit.history == [rec]


def test_bad_monitor_config_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        MonitorConfig(moderate_threshold=0.9, critical_threshold=0.5)
    with pytest.raises(ValueError, match="source"):
        MonitorConfig(source="smoke")
    with pytest.raises(ValueError, match="CUDA"):
        MemoryMonitor(MonitorConfig(source="cuda"), device="cpu")
    with pytest.raises(TypeError, match="trim"):
        MemoryOptimizer(MemoryMonitor(), [object()])


def test_memory_profiler_ranks_blocks_by_growth():
    mp = MemoryProfiler("cpu")
    kept = []
    with mp.profile("small"):
        kept.append(torch.ones(1024))
    with mp.profile("large"):
        kept.append(torch.ones(64 * 2**20 // 4))  # 64 MiB, touched
    top = mp.get_top_memory_users(1)
    assert [r["name"] for r in top] == ["large"]
    assert top[0]["delta_bytes"] > 32 * 2**20 and top[0]["source"] == "process-rss"
    assert top[0]["duration_ms"] > 0
    assert mp.summary()["large"]["calls"] == 1
    assert len(mp.get_top_memory_users(10)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pressure_matches_mem_get_info():
    monitor = MemoryMonitor(MonitorConfig(source="cuda"), device="cuda")
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    pressure = monitor.check_memory_pressure()
    free, total = torch.cuda.mem_get_info()
    assert pressure == pytest.approx(1 - free / total, abs=0.01)
    assert monitor.last.source == "cuda"
    del block


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pool_reuses_device_memory():
    pool = SimpleMemoryPool(device="cuda")
    a = pool.get_tensor((1024,))
    ptr = a.data_ptr()
    pool.return_tensor(a)
    del a
    b = pool.get_tensor((1024,), device="cuda:0")
    assert b.device.type == "cuda" and b.data_ptr() == ptr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvml_pressure_with_its_own_session_and_shut_down():
    with MemoryMonitor(MonitorConfig(source="nvml"), device="cuda") as monitor:
        reading = monitor.read()
        assert monitor.nvml_problem is None and reading.source == "nvml"
        free, total = torch.cuda.mem_get_info()
        assert abs(reading.limit_bytes - total) <= 0.02 * total  # the same device, via NVML
        assert reading.used_bytes >= torch.cuda.memory_reserved()
    assert monitor._nvml is None  # closed on exit
