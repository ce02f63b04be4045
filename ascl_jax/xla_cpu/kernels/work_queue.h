// Work sharing over XLA's intra-op thread pool for the FFI kernels in this folder.
//
// A kernel splits its work into `count` items with fixed boundaries (so results do not depend on
// which thread runs which item), puts a WorkQueue in a heap-allocated job held by a shared_ptr,
// and calls RunOnPool. Each draining thread claims items one at a time; the calling thread drains
// too and then waits only for items other threads have already claimed (they are running), so a
// busy or single-thread pool cannot deadlock it. Pool tasks that start after all items are claimed
// return at once; the shared_ptr keeps the job alive for them.
#ifndef ASCL_JAX_XLA_CPU_KERNELS_WORK_QUEUE_H_
#define ASCL_JAX_XLA_CPU_KERNELS_WORK_QUEUE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ascl {

struct WorkQueue {
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  // Claims the next item into k; false when none is left.
  bool Claim(int64_t& k) {
    k = next.fetch_add(1, std::memory_order_relaxed);
    return k < count;
  }
  // Marks one claimed item as finished (its writes become visible to Wait's caller).
  void Finish() { done.fetch_add(1, std::memory_order_release); }
  void Wait() const {
    while (done.load(std::memory_order_acquire) < count) std::this_thread::yield();
  }
};

// Runs drain(*job) on the calling thread and on pool threads (one worker per pool thread, at most
// one per item) and returns when all job->queue.count items are finished. drain claims items
// with job.queue.Claim and reports each with job.queue.Finish.
template <typename Job, typename Drain>
void RunOnPool(xla::ffi::ThreadPool& pool, const std::shared_ptr<Job>& job, Drain drain) {
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()),
                                            job->queue.count);
  for (int64_t t = 1; t < workers; ++t) pool.Schedule([job, drain] { drain(*job); });
  drain(*job);
  job->queue.Wait();
}

}  // namespace ascl

#endif  // ASCL_JAX_XLA_CPU_KERNELS_WORK_QUEUE_H_
