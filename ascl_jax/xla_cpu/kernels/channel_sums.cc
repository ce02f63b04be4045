// Per-channel sums for train-mode batch norm on XLA:CPU, as an XLA FFI custom call.
//
//   ascl_channel_sums(a [..., C], b [..., C], shift [C]) -> (s1 [C], s2 [C])
//     s1[c] = sum_m a[m, c]
//     s2[c] = sum_m a[m, c] * (b[m, c] - shift[c])
//
// BN forward: a = b = x, shift = 0 -> (sum x, sum x^2). BN backward: a = dy, b = x, shift = mean
// -> (sum dy, sum dy * (x - mean)). One pass over the operands, where XLA:CPU's reductions write
// x*x, x - mean and dy * (x - mean) to memory first (docs/design.md "CPU fast paths").
//
// Summation: rows are cut into chunks (one per thread of XLA's intra-op pool, shared out by
// work_queue.h; the calling thread drains chunks too, so nothing waits on a busy pool), each chunk
// sums blocks of kBlock rows in float and adds the block sums into double; chunk sums are added in
// chunk order. The result depends only on the shape and the pool size, not on thread timing.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "work_queue.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 256;          // rows summed in float before the double accumulators
constexpr int64_t kMinChunkElems = 1 << 16;  // below this, one chunk (threads cost more than they save)

struct Job {
  const float* a;
  const float* b;
  const float* shift;
  int64_t m = 0, c = 0, chunks = 1, rows_per_chunk = 0;
  std::vector<double> part;  // [chunks, 2, c]
  ascl::WorkQueue queue;      // one item per chunk
};

// Any C: two rows at a time into float block sums (vectorised by the compiler over c).
void SumRowsGeneric(const Job& j, int64_t r0, int64_t r1, double* d1, double* d2) {
  const int64_t c = j.c;
  std::vector<float> buf(4 * c);
  float* __restrict p1a = buf.data();
  float* __restrict p2a = p1a + c;
  float* __restrict p1b = p2a + c;
  float* __restrict p2b = p1b + c;
  const float* __restrict sh = j.shift;
  for (int64_t r = r0; r < r1; r += kBlock) {
    const int64_t re = std::min(r1, r + kBlock);
    std::fill(buf.begin(), buf.end(), 0.0f);
    int64_t i = r;
    for (; i + 2 <= re; i += 2) {
      const float* __restrict a0 = j.a + i * c;
      const float* __restrict b0 = j.b + i * c;
      const float* __restrict a1 = a0 + c;
      const float* __restrict b1 = b0 + c;
      for (int64_t q = 0; q < c; ++q) {
        p1a[q] += a0[q];
        p2a[q] += a0[q] * (b0[q] - sh[q]);
        p1b[q] += a1[q];
        p2b[q] += a1[q] * (b1[q] - sh[q]);
      }
    }
    for (; i < re; ++i) {
      const float* __restrict a0 = j.a + i * c;
      const float* __restrict b0 = j.b + i * c;
      for (int64_t q = 0; q < c; ++q) {
        p1a[q] += a0[q];
        p2a[q] += a0[q] * (b0[q] - sh[q]);
      }
    }
    for (int64_t q = 0; q < c; ++q) {
      d1[q] += static_cast<double>(p1a[q] + p1b[q]);
      d2[q] += static_cast<double>(p2a[q] + p2b[q]);
    }
  }
}

#if defined(__AVX512F__)
// C = 16 * V: the block sums live in 4 * V zmm registers (two rows in flight).
template <int64_t V>
void SumRowsAvx512(const Job& j, int64_t r0, int64_t r1, double* d1, double* d2) {
  constexpr int64_t C = 16 * V;
  __m512 sh[V];
  for (int64_t v = 0; v < V; ++v) sh[v] = _mm512_loadu_ps(j.shift + 16 * v);
  for (int64_t r = r0; r < r1; r += kBlock) {
    const int64_t re = std::min(r1, r + kBlock);
    __m512 s1[2][V], s2[2][V];
    for (int u = 0; u < 2; ++u)
      for (int64_t v = 0; v < V; ++v) s1[u][v] = s2[u][v] = _mm512_setzero_ps();
    int64_t i = r;
    for (; i + 2 <= re; i += 2) {
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
#pragma GCC unroll 8
        for (int64_t v = 0; v < V; ++v) {
          const __m512 x = _mm512_loadu_ps(j.a + (i + u) * C + 16 * v);
          const __m512 y = _mm512_loadu_ps(j.b + (i + u) * C + 16 * v);
          s1[u][v] = _mm512_add_ps(s1[u][v], x);
          s2[u][v] = _mm512_fmadd_ps(x, _mm512_sub_ps(y, sh[v]), s2[u][v]);
        }
      }
    }
    for (; i < re; ++i) {
      for (int64_t v = 0; v < V; ++v) {
        const __m512 x = _mm512_loadu_ps(j.a + i * C + 16 * v);
        const __m512 y = _mm512_loadu_ps(j.b + i * C + 16 * v);
        s1[0][v] = _mm512_add_ps(s1[0][v], x);
        s2[0][v] = _mm512_fmadd_ps(x, _mm512_sub_ps(y, sh[v]), s2[0][v]);
      }
    }
    for (int64_t v = 0; v < V; ++v) {
      alignas(64) float t1[16], t2[16];
      _mm512_store_ps(t1, _mm512_add_ps(s1[0][v], s1[1][v]));
      _mm512_store_ps(t2, _mm512_add_ps(s2[0][v], s2[1][v]));
      for (int q = 0; q < 16; ++q) {
        d1[16 * v + q] += static_cast<double>(t1[q]);
        d2[16 * v + q] += static_cast<double>(t2[q]);
      }
    }
  }
}
#endif

void RunChunk(Job& j, int64_t k) {
  const int64_t r0 = k * j.rows_per_chunk;
  const int64_t r1 = std::min(j.m, r0 + j.rows_per_chunk);
  double* d1 = j.part.data() + k * 2 * j.c;
  double* d2 = d1 + j.c;
#if defined(__AVX512F__)
  switch (j.c) {
    case 16: return SumRowsAvx512<1>(j, r0, r1, d1, d2);
    case 32: return SumRowsAvx512<2>(j, r0, r1, d1, d2);
    case 48: return SumRowsAvx512<3>(j, r0, r1, d1, d2);
    case 64: return SumRowsAvx512<4>(j, r0, r1, d1, d2);
    default: break;
  }
#endif
  SumRowsGeneric(j, r0, r1, d1, d2);
}

// Claims and runs chunks until none is left; safe to call from any number of threads.
void Drain(Job& j) {
  for (int64_t k; j.queue.Claim(k); j.queue.Finish()) RunChunk(j, k);
}

ffi::Error ChannelSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                           ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> s1,
                           ffi::ResultBuffer<ffi::F32> s2) {
  const auto dims = a.dimensions();
  if (dims.size() < 1) {
    return ffi::Error::InvalidArgument("ascl_channel_sums: operands need rank >= 1");
  }
  const int64_t c = dims.back();
  if (b.element_count() != a.element_count() || shift.element_count() != c ||
      s1->element_count() != c || s2->element_count() != c) {
    return ffi::Error::InvalidArgument("ascl_channel_sums: shapes must be a, b [..., C], shift [C]");
  }
  float* o1 = s1->typed_data();
  float* o2 = s2->typed_data();
  if (c == 0) return ffi::Error::Success();
  auto job = std::make_shared<Job>();
  job->a = a.typed_data();
  job->b = b.typed_data();
  job->shift = shift.typed_data();
  job->c = c;
  job->m = static_cast<int64_t>(a.element_count()) / c;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  job->chunks = std::max<int64_t>(
      1, std::min<int64_t>(threads, (job->m * c) / kMinChunkElems));
  job->rows_per_chunk = (job->m + job->chunks - 1) / job->chunks;
  job->part.assign(job->chunks * 2 * c, 0.0);
  job->queue.count = job->chunks;
  ascl::RunOnPool(pool, job, Drain);
  for (int64_t q = 0; q < c; ++q) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t k = 0; k < job->chunks; ++k) {
      t1 += job->part[k * 2 * c + q];
      t2 += job->part[k * 2 * c + c + q];
    }
    o1[q] = static_cast<float>(t1);
    o2[q] = static_cast<float>(t2);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AsclChannelSums, ChannelSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
