"""UnifiedMemoryManager: categories, lifetimes, priorities, budgets and thread safety."""

import random
import sys
import threading

import pytest
import torch

from profiler.memory import MemoryPriority, UnifiedMemoryConfig, UnifiedMemoryManager

F32 = 4


def test_per_category_statistics():
    m = UnifiedMemoryManager()
    a = m.acquire_tensor((10, 10), category="carrier")
    b = m.acquire_tensor(25, category="spawn", dtype=torch.float64)
    assert a.shape == (10, 10) and b.dtype == torch.float64
    m.release_tensor(a)
    del a
    c = m.acquire_tensor((10, 10), category="carrier")
    m.release_tensor(c)
    stats = m.get_stats()
    carrier, spawn = stats["carrier"], stats["spawn"]
    assert (carrier["hits"], carrier["misses"], carrier["acquisitions"], carrier["releases"]) == (
        1, 1, 2, 2)
    assert carrier["hit_rate"] == 0.5
    assert carrier["held_bytes"] == 400 and carrier["live_bytes"] == 0 and carrier["peak_bytes"] == 400
    assert spawn["live_bytes"] == 200 and spawn["held_bytes"] == 0 and spawn["misses"] == 1
    assert m.summary()["acquisitions"] == 3
    assert m.pool_stats()["carrier"] == {"hits": 1, "misses": 1, "held_bytes": 400, "live_bytes": 0,
                                         "peak_bytes": 400, "acquisitions": 2, "releases": 2}


def test_categories_do_not_share_buffers():
    m = UnifiedMemoryManager()
    a = m.acquire_tensor(8, category="x")
    ptr = a.data_ptr()
    m.release_tensor(a)
    del a
    b = m.acquire_tensor(8, category="y")
    assert b.data_ptr() != ptr
    c = m.acquire_tensor(8, category="x")
    assert c.data_ptr() == ptr


def test_lifetimes_and_priorities_decide_what_is_kept():
    m = UnifiedMemoryManager()
    ts = {
        "persistent": m.acquire_tensor(10, category="c", lifetime="persistent"),
        "cached": m.acquire_tensor(20, category="c", lifetime="cached"),
        "low": m.acquire_tensor(30, category="c", priority=MemoryPriority.LOW),
        "normal": m.acquire_tensor(40, category="c"),
        "critical": m.acquire_tensor(50, category="c", priority=MemoryPriority.CRITICAL),
    }
    for t in ts.values():
        m.release_tensor(t)
    del ts, t
    s = m.get_stats()["c"]
    assert s["dropped"] == 1                       # persistent memory is freed, not pooled
    assert s["held_bytes"] == (20 + 30 + 40 + 50) * F32
    assert m.release_low_priority() == 30 * F32
    assert m.trim("moderate") == 20 * F32          # cached goes under moderate pressure
    assert m.get_stats()["c"]["held_bytes"] == (40 + 50) * F32
    assert m.trim("critical") == (40 + 50) * F32
    assert m.held_bytes() == 0


def test_category_budget_evicts_lower_priority_first():
    m = UnifiedMemoryManager(UnifiedMemoryConfig(category_budgets={"c": 250 * F32}))
    low = m.acquire_tensor(100, category="c", priority=MemoryPriority.LOW)
    normal = m.acquire_tensor(100, category="c")
    high = m.acquire_tensor(100, category="c", priority=MemoryPriority.HIGH)
    m.release_tensor(low)
    m.release_tensor(normal)
    m.release_tensor(high)     # over budget: the low-priority idle buffer goes
    s = m.get_stats()["c"]
    assert s["held_bytes"] == 200 * F32 and s["dropped"] == 1
    extra = m.acquire_tensor(100, category="c", priority=MemoryPriority.LOW)
    m.release_tensor(extra)    # nothing ranked at or below LOW to evict: the newcomer goes
    assert m.get_stats()["c"]["dropped"] == 2
    assert m.get_stats()["c"]["held_bytes"] == 200 * F32


def test_total_budget_spans_categories():
    m = UnifiedMemoryManager(UnifiedMemoryConfig(total_budget_bytes=150 * F32))
    a = m.acquire_tensor(100, category="a")
    b = m.acquire_tensor(100, category="b")
    m.release_tensor(a)
    m.release_tensor(b)
    assert m.held_bytes() == 100 * F32
    assert m.get_stats()["a"]["dropped"] + m.get_stats()["b"]["dropped"] == 1


def test_allocate_context_uses_its_defaults():
    m = UnifiedMemoryManager()
    with m.allocate_context(category="ctx", lifetime="cached") as ctx:
        a = ctx.allocate((3, 3))
        z = ctx.zeros(4)
        assert torch.equal(z, torch.zeros(4)) and a.shape == (3, 3)
    s = m.get_stats()["ctx"]
    assert s["releases"] == 2 and s["live_bytes"] == 0
    assert m.trim("moderate") == (9 + 4) * F32


def test_disabled_manager_never_pools():
    m = UnifiedMemoryManager(UnifiedMemoryConfig(enabled=False))
    for _ in range(3):
        m.release_tensor(m.acquire_tensor(16))
    s = m.get_stats()["general"]
    assert s["hits"] == 0 and s["misses"] == 3 and s["held_bytes"] == 0


def test_bad_requests_and_config_are_rejected():
    m = UnifiedMemoryManager()
    with pytest.raises(ValueError, match="lifetime"):
        m.acquire_tensor(3, lifetime="forever")
    with pytest.raises(ValueError, match="priority"):
        m.acquire_tensor(3, priority="high")
    with pytest.raises(ValueError, match="category_budgets"):
        UnifiedMemoryConfig(category_budgets={"x": -1})
    with pytest.raises(ValueError, match="total_budget_bytes"):
        UnifiedMemoryConfig(total_budget_bytes=1.5)
    with pytest.raises(ValueError, match="level"):
        m.trim("severe")


def test_threads_hammering_the_manager_never_share_a_tensor():
    # budgets put a policy call between the cap check and the store: a wider race window
    m = UnifiedMemoryManager(UnifiedMemoryConfig(max_tensors_per_key=4,
                                                 default_budget_bytes=1 << 20))
    owners: dict[int, int] = {}
    guard = threading.Lock()
    errors: list[str] = []
    n_threads, rounds = 8, 400
    shapes = [(16,), (32,), (8, 8)]

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        held = []
        for i in range(rounds):
            t = m.acquire_tensor(rng.choice(shapes), category=f"cat{i % 2}",
                                 priority=rng.choice((-1, 0, 1)))
            with guard:
                if t.data_ptr() in owners:
                    errors.append(f"{t.data_ptr()} handed to {tid} while {owners[t.data_ptr()]} holds it")
                owners[t.data_ptr()] = tid
            t.fill_(tid)
            held.append(t)
            if len(held) > 3 or rng.random() < 0.5:
                old = held.pop(rng.randrange(len(held)))
                if not torch.all(old == tid):
                    errors.append(f"thread {tid} found its tensor overwritten")
                with guard:
                    del owners[old.data_ptr()]
                m.release_tensor(old)
                del old
            if i % 50 == 0:
                m.release_low_priority()
        for old in held:
            with guard:
                del owners[old.data_ptr()]
            m.release_tensor(old)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    total = m.summary()
    assert total["acquisitions"] == n_threads * rounds
    assert total["releases"] == n_threads * rounds
    assert total["hits"] + total["misses"] == total["acquisitions"]
    assert total["live_bytes"] == 0
    assert total["hits"] > 0
    audit = m.audit()
    assert audit["held_bytes_counted"] == audit["held_bytes_actual"] == total["held_bytes"]
    assert audit["live_bytes_counted"] == audit["live_bytes_actual"] == 0
    assert audit["longest_free_list"] <= 4
    assert total["double_returns"] + total["foreign_returns"] + total["view_returns"] == 0
