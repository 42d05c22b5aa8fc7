"""managed_memory: factory calls routed through a TorchFunctionMode, never by reassignment."""

import threading

import pytest
import torch

from profiler.memory import SimpleMemoryPool, UnifiedMemoryManager, managed_memory

ORIGINAL_ZEROS = torch.zeros


def test_factories_inside_the_function_come_from_the_pool():
    seen = {}

    @managed_memory
    def work(x):
        seen["zeros_is_original"] = torch.zeros is ORIGINAL_ZEROS
        a = torch.zeros(3, 4)
        b = torch.empty((2, 2), dtype=torch.float64)
        c = torch.ones(5)
        d = torch.full((2, 3), 2.5, dtype=torch.float32)
        e = torch.zeros_like(x)
        f = torch.ones_like(x, dtype=torch.float64)
        g = x.new_zeros((7,))
        h = x.new_full((2,), 3.0)
        return [t.clone() for t in (a, c, d, e, f, g, h)], b.dtype, b.shape

    x = torch.randn(2, 5)
    values, b_dtype, b_shape = work(x)
    assert seen["zeros_is_original"] and torch.zeros is ORIGINAL_ZEROS
    a, c, d, e, f, g, h = values
    assert torch.equal(a, torch.zeros(3, 4)) and torch.equal(c, torch.ones(5))
    assert torch.equal(d, torch.full((2, 3), 2.5))
    assert torch.equal(e, torch.zeros(2, 5)) and f.dtype == torch.float64 and torch.equal(
        f, torch.ones(2, 5, dtype=torch.float64))
    assert torch.equal(g, torch.zeros(7)) and torch.equal(h, torch.full((2,), 3.0))
    assert b_dtype == torch.float64 and b_shape == (2, 2)
    s = work.pool.stats()
    assert s["acquisitions"] == 8 and s["returns"] == 8 and s["live_bytes"] == 0
    work(x)
    assert work.pool.stats()["hits"] == 8


def test_calls_the_pool_cannot_serve_exactly_go_to_torch():
    pool = SimpleMemoryPool()

    @managed_memory(pool=pool)
    def work():
        out = torch.empty(3)
        r = [
            torch.zeros(3, requires_grad=True),
            torch.zeros(3, out=out),
            torch.full((2,), 1),                 # dtype inferred from the fill value
            torch.empty((1, 2, 3, 4), memory_format=torch.channels_last),
            torch.zeros(torch.tensor(3)),        # a size torch accepts but the pool does not parse
        ]
        return r

    grad, outed, full_int, nhwc, sized = work()
    assert torch.equal(sized, torch.zeros(3))
    assert grad.requires_grad and full_int.dtype == torch.int64
    assert torch.equal(outed, torch.zeros(3))
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert pool.stats()["acquisitions"] == 1  # only `out` itself came from the pool


def test_escaped_result_is_counted_and_its_memory_not_reused():
    @managed_memory
    def make(v):
        t = torch.empty(16)
        t.fill_(v)
        scratch = torch.zeros(16)
        scratch += 1
        return t

    first = make(1.0)
    second = make(2.0)
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, torch.full((16,), 1.0))
    assert torch.equal(second, torch.full((16,), 2.0))
    s = make.pool.stats()
    assert s["escaped"] == 2 and s["acquisitions"] == 4


def test_release_happens_when_the_function_raises():
    @managed_memory
    def fail():
        torch.zeros(10)
        raise KeyError("x")

    with pytest.raises(KeyError):
        fail()
    s = fail.pool.stats()
    assert s["returns"] == 1 and s["live_bytes"] == 0


def test_other_threads_are_unaffected():
    pool = SimpleMemoryPool()
    inside, leave = threading.Event(), threading.Event()

    @managed_memory(pool=pool)
    def hold():
        torch.zeros(8)
        inside.set()
        assert leave.wait(10)
        torch.zeros(8)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert inside.wait(10)
        before = pool.stats()["acquisitions"]
        mine = torch.zeros(8)  # this thread: plain torch while the worker is inside
        assert pool.stats()["acquisitions"] == before == 1
        assert pool.return_tensor(mine) is False  # not one of the pool's
    finally:
        leave.set()
        worker.join(10)
    assert pool.stats()["acquisitions"] == 2


def test_decorator_with_the_manager_charges_its_category():
    manager = UnifiedMemoryManager()

    @managed_memory(pool=manager, category="decorated", priority=-1)
    def work():
        return torch.zeros(4).sum()

    assert float(work()) == 0.0
    stats = manager.get_stats()["decorated"]
    assert stats["acquisitions"] == 1 and stats["releases"] == 1
    assert manager.release_low_priority() == 16
