// Counting CPU allocator: PyTorch's default CPU allocator (c10::alloc_cpu / free_cpu, with the
// same reports to the profiler's memory events) plus exact counters of the tensor bytes it
// hands out. Read through a plain C interface (ctypes), so no Python headers are needed.
//
// Each block carries a 64-byte header holding its size, so a free knows how many bytes it
// returns without a lookup table; the data pointer stays 64-byte aligned like c10's.

#include <atomic>
#include <cstdint>
#include <cstring>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

namespace {

constexpr size_t kHeader = 64;

// One array, so Python reads the six counters through one view (tc_counters).
std::atomic<int64_t> g_counters[6] = {};
std::atomic<int64_t>& g_live = g_counters[0];         // bytes allocated here, not yet freed
std::atomic<int64_t>& g_peak = g_counters[1];         // highest g_live since the last reset
std::atomic<int64_t>& g_alloc_count = g_counters[2];  // allocations since install (monotonic)
std::atomic<int64_t>& g_alloc_bytes = g_counters[3];  // bytes of those allocations (monotonic)
std::atomic<int64_t>& g_free_count = g_counters[4];
std::atomic<int64_t>& g_free_bytes = g_counters[5];

void raise_peak(int64_t live) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (live > peak && !g_peak.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
  }
}

void counted_delete(void* data) {
  if (data == nullptr) {
    return;
  }
  char* base = static_cast<char*>(data) - kHeader;
  int64_t nbytes = 0;
  std::memcpy(&nbytes, base, sizeof(nbytes));
  c10::profiledCPUMemoryReporter().Delete(data);
  g_live.fetch_sub(nbytes, std::memory_order_relaxed);
  g_free_count.fetch_add(1, std::memory_order_relaxed);
  g_free_bytes.fetch_add(nbytes, std::memory_order_relaxed);
  c10::free_cpu(base);
}

class CountingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes == 0) {
      return {nullptr, nullptr, &counted_delete, c10::Device(c10::DeviceType::CPU)};
    }
    void* base = nullptr;
    try {
      base = c10::alloc_cpu(nbytes + kHeader);
    } catch (c10::Error&) {
      c10::profiledCPUMemoryReporter().OutOfMemory(nbytes);
      throw;
    }
    int64_t n = static_cast<int64_t>(nbytes);
    std::memcpy(base, &n, sizeof(n));
    void* data = static_cast<char*>(base) + kHeader;
    c10::profiledCPUMemoryReporter().New(data, nbytes);
    raise_peak(g_live.fetch_add(n, std::memory_order_relaxed) + n);
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    g_alloc_bytes.fetch_add(n, std::memory_order_relaxed);
    return {data, data, &counted_delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &counted_delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingCPUAllocator g_allocator;
c10::Allocator* g_previous = nullptr;

}  // namespace

extern "C" {

// 1 when installed now (or already), 0 when another non-default CPU allocator is in place.
int tc_install() {
  c10::Allocator* current = c10::GetCPUAllocator();
  if (current == &g_allocator) {
    return 1;
  }
  if (current != c10::GetDefaultCPUAllocator()) {
    return 0;
  }
  g_previous = current;
  c10::SetCPUAllocator(&g_allocator, /*priority=*/0);
  return c10::GetCPUAllocator() == &g_allocator ? 1 : 0;
}

// Route new allocations back to the previous allocator; blocks already handed out keep
// their counting deleter, so the counters stay exact.
void tc_uninstall() {
  if (g_previous != nullptr && c10::GetCPUAllocator() == &g_allocator) {
    c10::SetCPUAllocator(g_previous, /*priority=*/0);
  }
}

int tc_installed() { return c10::GetCPUAllocator() == &g_allocator ? 1 : 0; }

// out: live, peak, alloc_count, alloc_bytes, free_count, free_bytes
void tc_read(int64_t* out) {
  out[0] = g_live.load(std::memory_order_relaxed);
  out[1] = g_peak.load(std::memory_order_relaxed);
  out[2] = g_alloc_count.load(std::memory_order_relaxed);
  out[3] = g_alloc_bytes.load(std::memory_order_relaxed);
  out[4] = g_free_count.load(std::memory_order_relaxed);
  out[5] = g_free_bytes.load(std::memory_order_relaxed);
}

void tc_reset_peak() { g_peak.store(g_live.load(std::memory_order_relaxed)); }

// The six counters (tc_read's order) in place: lock-free 64-bit atomics with the layout of
// int64_t, one array, so Python reads them, and stores the peak reset, without a call.
int64_t* tc_counters() {
  static_assert(sizeof(std::atomic<int64_t>) == sizeof(int64_t), "atomic layout");
  static_assert(std::atomic<int64_t>::is_always_lock_free, "lock-free counters");
  return reinterpret_cast<int64_t*>(g_counters);
}

}  // extern "C"
