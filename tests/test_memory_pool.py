"""SimpleMemoryPool and MemoryContext: reuse, caps, statistics and the safety rules."""

import gc

import pytest
import torch

from profiler.memory import MemoryContext, SimpleMemoryPool

F32 = 4


def test_returned_tensor_is_reused_and_counted():
    pool = SimpleMemoryPool()
    a = pool.get_tensor((8, 4))
    ptr = a.data_ptr()
    assert a.shape == (8, 4) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert pool.return_tensor(a) is True
    del a
    b = pool.get_tensor([8, 4])
    assert b.data_ptr() == ptr
    s = pool.stats()
    assert (s["hits"], s["misses"], s["returns"], s["acquisitions"]) == (1, 1, 1, 2)
    assert s["live_bytes"] == 32 * F32 and s["held_bytes"] == 0 and s["peak_bytes"] == 32 * F32
    pool.return_tensor(b)
    assert pool.stats()["held_bytes"] == 32 * F32


def test_empty_semantics_by_default_and_zero_on_request():
    pool = SimpleMemoryPool()
    a = pool.get_tensor(16)
    a.fill_(7.0)
    pool.return_tensor(a)
    del a
    b = pool.get_tensor(16)
    assert torch.equal(b, torch.full((16,), 7.0))  # same memory, not cleared
    pool.return_tensor(b)
    del b
    c = pool.get_tensor(16, zero=True)
    assert torch.equal(c, torch.zeros(16))


def test_keys_separate_shape_dtype_and_cap_per_key():
    pool = SimpleMemoryPool(max_per_key=2)
    ts = [pool.get_tensor((4,)) for _ in range(3)]
    other = pool.get_tensor((4,), dtype=torch.float64)
    for t in ts:
        pool.return_tensor(t)
    pool.return_tensor(other)
    s = pool.stats()
    assert s["misses"] == 4 and s["hits"] == 0
    assert s["dropped"] == 1
    assert s["pooled_tensors"] == 3
    assert s["held_bytes"] == 2 * 4 * F32 + 4 * 8


def test_max_bytes_caps_idle_memory():
    pool = SimpleMemoryPool(max_bytes=100)
    a, b = pool.get_tensor(20), pool.get_tensor(20)  # 80 bytes each
    pool.return_tensor(a)
    pool.return_tensor(b)
    s = pool.stats()
    assert s["held_bytes"] == 80 and s["dropped"] == 1


def test_escaped_tensor_is_never_handed_out_while_referenced():
    pool = SimpleMemoryPool()

    class Holder:
        pass

    holder = Holder()
    a = pool.get_tensor(64)
    a.fill_(1.0)
    holder.kept = a
    pool.return_tensor(a)
    del a
    b = pool.get_tensor(64)  # the returned buffer is still referenced by holder
    b.fill_(2.0)
    assert b.data_ptr() != holder.kept.data_ptr()
    assert torch.equal(holder.kept, torch.ones(64))
    assert pool.stats()["busy_skips"] == 1
    kept_ptr = holder.kept.data_ptr()
    del holder.kept
    c = pool.get_tensor(64)
    assert c.data_ptr() == kept_ptr


def test_tensor_saved_by_autograd_is_not_reused_until_backward():
    pool = SimpleMemoryPool()
    w = torch.randn(32, requires_grad=True)
    m = pool.get_tensor(32)
    m.copy_(torch.arange(32.0))
    ptr = m.data_ptr()
    y = (w * m).sum()  # autograd saves m
    pool.return_tensor(m)
    del m
    other = pool.get_tensor(32)
    assert other.data_ptr() != ptr
    other.fill_(-5.0)
    y.backward()
    assert torch.equal(w.grad, torch.arange(32.0))
    del y
    again = pool.get_tensor(32)
    assert again.data_ptr() == ptr


def test_autograd_tensors_returned_are_counted():
    pool = SimpleMemoryPool()
    a = pool.get_tensor(4)
    a.requires_grad_(True)
    assert pool.return_tensor(a) is True
    assert pool.stats()["autograd_returns"] == 1


def test_double_foreign_and_view_returns_are_refused_and_counted():
    pool = SimpleMemoryPool()
    a = pool.get_tensor((4, 4))
    view = a[1:]
    assert pool.return_tensor(view) is False           # a view of a live handout
    assert pool.return_tensor(a) is True
    assert pool.return_tensor(a) is False              # second return
    assert pool.return_tensor(torch.zeros(4, 4)) is False
    assert pool.return_tensor(None) is False
    s = pool.stats()
    assert (s["view_returns"], s["double_returns"], s["foreign_returns"]) == (1, 1, 1)
    assert s["returns"] == 1 and s["pooled_tensors"] == 1
    ptr = a.data_ptr()
    del a
    b = pool.get_tensor((4, 4))
    assert b.data_ptr() != ptr                          # the view still holds the memory
    del view
    c = pool.get_tensor((4, 4))
    assert c.data_ptr() == ptr


def test_tensor_dropped_without_return_is_reclaimed():
    pool = SimpleMemoryPool()
    a = pool.get_tensor(128)
    ptr = a.data_ptr()
    del a
    gc.collect()
    b = pool.get_tensor(128)
    s = pool.stats()
    assert b.data_ptr() == ptr
    assert s["reclaimed"] == 1 and s["hits"] == 1 and s["live_bytes"] == 128 * F32


def test_memory_context_returns_everything_on_exit():
    pool = SimpleMemoryPool()

    def work():
        with MemoryContext(pool) as mem:
            a = mem.zeros((10, 3))
            b = mem.empty(5, 2, dtype=torch.float64)
            assert torch.equal(a, torch.zeros(10, 3)) and b.shape == (5, 2)
            return a.data_ptr(), b.data_ptr()

    first = work()
    s = pool.stats()
    assert s["returns"] == 2 and s["live_bytes"] == 0
    assert work() == first
    assert pool.stats()["hits"] == 2


def test_memory_context_returns_on_error_and_supports_early_release():
    pool = SimpleMemoryPool()
    with pytest.raises(RuntimeError, match="boom"):
        with pool.scope() as mem:
            a = mem.empty(4)
            assert mem.release(a) is True
            mem.empty(6)
            raise RuntimeError("boom")
    s = pool.stats()
    assert s["returns"] == 2 and s["double_returns"] == 0 and s["live_bytes"] == 0


def test_trim_and_clear():
    pool = SimpleMemoryPool()
    ts = [pool.get_tensor(10) for _ in range(3)] + [pool.get_tensor(20)]
    for t in ts:
        pool.return_tensor(t)
    del ts, t
    assert pool.trim("moderate") == 2 * 10 * F32
    assert pool.stats()["held_bytes"] == (10 + 20) * F32
    assert pool.trim("critical") == (10 + 20) * F32
    s = pool.stats()
    assert s["held_bytes"] == 0 and s["trimmed"] == 4


def test_bad_input_is_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="max_per_key"):
        SimpleMemoryPool(max_per_key=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        SimpleMemoryPool(max_bytes=-5)
    pool = SimpleMemoryPool()
    with pytest.raises(ValueError, match="shape"):
        pool.get_tensor((3, -1))
    with pytest.raises(TypeError, match="shape"):
        pool.get_tensor(2.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pool.return_tensor([1, 2])
    with pytest.raises(TypeError, match="MemoryContext"):
        MemoryContext(object())


def test_dropped_handout_reclaimed_by_stats_respects_max_bytes():
    pool = SimpleMemoryPool(max_bytes=0)
    t = pool.get_tensor((1024,))
    del t
    gc.collect()
    s = pool.stats()  # the reclaim happens here, inside the statistics snapshot
    assert (s["reclaimed"], s["dropped"], s["held_bytes"], s["pooled_tensors"]) == (1, 1, 0, 0)
