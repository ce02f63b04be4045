// 3x3, stride 1, padding 1 convolution, NHWC x HWIO -> NHWC, float32, for XLA:CPU (XLA FFI).
//
//   ascl_conv3x3(x [N, H, W, Ci], w [3, 3, Ci, Co]) -> y [N, H, W, Co],   Co % 16 == 0
//     y[n, h, v, o] = sum_{a, b, i} xpad[n, h + a, v + b, i] * w[a, b, i, o]   (xpad: 1 zero pixel
//     around each image)
//
// Used for the forward of ResNet's 3x3 stride-1 convolutions and, with the kernel flipped and its
// channel axes swapped, for their input gradient; ascl_conv3x3_wgrad (below) is their kernel
// gradient (ascl_jax/xla_cpu/conv.py). Direct convolution: each image is copied into a
// zero-padded buffer once, then every output row is computed in blocks of WB pixels x 16V output
// channels held in zmm registers (WB * V = 16 accumulators), the input channels in chunks whose
// weights stay in L1 (BlockTaps, Group). Images are spread over XLA's intra-op thread pool
// (work_queue.h; the calling thread takes images too). Summation order per output: input-channel
// chunk, kernel row a, input channel i, tap b, in float32 FMAs; the result does not depend on the
// thread count.
// Without AVX-512 only plain loops are compiled, and the Python side does not use the kernel.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "work_queue.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Buffer4 = ffi::Buffer<ffi::F32, 4>;
using Result4 = ffi::ResultBuffer<ffi::F32, 4>;

namespace {

// Sizes shared by both kernels: N images of H x W pixels, Ci input and Co output channels.
struct ConvDims {
  int64_t n = 0, h = 0, wd = 0, ci = 0, co = 0;
};

// x [N, H, W, Ci] (the dimensions of an FFI buffer) and Co.
template <typename Dims>
ConvDims DimsOf(const Dims& xd, int64_t co) {
  return ConvDims{xd[0], xd[1], xd[2], xd[3], co};
}

struct ConvJob : ConvDims {
  const float* x;
  const float* w;
  float* y;
  ascl::WorkQueue queue;  // one item per image
};

// Zero-padded copy of one image [H, W, C] -> pad [(H + 2), (W + 2), C].
void PadImage(const float* xn, int64_t h, int64_t wd, int64_t ci, std::vector<float>& pad) {
  const int64_t prow = (wd + 2) * ci;
  std::fill(pad.begin(), pad.begin() + prow, 0.0f);
  std::fill(pad.end() - prow, pad.end(), 0.0f);
  for (int64_t r = 0; r < h; ++r) {
    float* dst = pad.data() + (r + 1) * prow;
    std::fill(dst, dst + ci, 0.0f);
    std::memcpy(dst + ci, xn + r * wd * ci, sizeof(float) * wd * ci);
    std::fill(dst + (wd + 1) * ci, dst + prow, 0.0f);
  }
}

#if defined(__AVX512F__)
// One block: WB output pixels x 16V output channels, input channels [i0, i1). p: padded input at
// (row h, pixel v0, channel 0); prow: padded row stride; wg: w + channel-group offset; out: y at
// (n, h, v0, group offset). first: start from zero, else add to what out holds. A kernel row's
// three taps are in registers (3V weight vectors), and each broadcast input value x[u, i] feeds the
// up-to-3 outputs u - b it touches through taps b = 0, 1, 2: WB + 2 broadcasts per 3 WB V FMAs
// (one broadcast per V FMAs with a tap at a time: 1.35x slower at 16 channels).
template <int V, int WB>
inline void BlockTaps(const float* __restrict p, int64_t prow, int64_t ci, int64_t i0, int64_t i1,
                      const float* __restrict wg, int64_t co, float* __restrict out, bool first) {
  __m512 acc[WB][V];
  for (int q = 0; q < WB; ++q)
    for (int v = 0; v < V; ++v)
      acc[q][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out + q * co + 16 * v);
  for (int a = 0; a < 3; ++a) {
    const float* __restrict xp = p + a * prow;
    const float* __restrict wp = wg + a * 3 * ci * co;
    for (int64_t i = i0; i < i1; ++i) {
      __m512 wv[3][V];
      for (int b = 0; b < 3; ++b)
        for (int v = 0; v < V; ++v) wv[b][v] = _mm512_loadu_ps(wp + (b * ci + i) * co + 16 * v);
#pragma GCC unroll 32
      for (int u = 0; u < WB + 2; ++u) {
        const __m512 xb = _mm512_set1_ps(xp[u * ci + i]);
#pragma GCC unroll 3
        for (int b = 0; b < 3; ++b) {
          if (u - b >= 0 && u - b < WB) {
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v)
              acc[u - b][v] = _mm512_fmadd_ps(xb, wv[b][v], acc[u - b][v]);
          }
        }
      }
    }
  }
  for (int q = 0; q < WB; ++q)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(out + q * co + 16 * v, acc[q][v]);
}

// All pixels of one output row for one channel group of 16V, in blocks of WB (then 8, 4, 2, 1).
template <int V, int WB>
void Row(const float* p, int64_t prow, int64_t wd, int64_t ci, int64_t i0, int64_t i1,
         const float* wg, int64_t co, float* out, bool first) {
  int64_t v0 = 0;
  for (; v0 + WB <= wd; v0 += WB)
    BlockTaps<V, WB>(p + v0 * ci, prow, ci, i0, i1, wg, co, out + v0 * co, first);
  if constexpr (WB > 1) {
    constexpr int kHalf = WB / 2;
    if (v0 < wd) Row<V, kHalf>(p + v0 * ci, prow, wd - v0, ci, i0, i1, wg, co, out + v0 * co, first);
  }
}

// One channel group of 16V for a whole image. The input channels go in chunks of kChunk so that
// the chunk's weights (9 * kChunk * 16V floats, <= 18 KiB) stay in L1 across the image's rows.
template <int V, int WB>
void Group(const float* pad, int64_t h, int64_t wd, int64_t ci, const float* wg, int64_t co,
           float* yn) {
  constexpr int64_t kChunk = V == 1 ? 32 : (V == 2 ? 16 : 8);
  const int64_t prow = (wd + 2) * ci;
  for (int64_t i0 = 0; i0 < ci; i0 += kChunk) {
    const int64_t i1 = std::min(ci, i0 + kChunk);
    for (int64_t r = 0; r < h; ++r)
      Row<V, WB>(pad + r * prow, prow, wd, ci, i0, i1, wg, co, yn + r * wd * co, i0 == 0);
  }
}
#endif

void Image(const ConvJob& j, int64_t n, std::vector<float>& pad) {
  const int64_t ci = j.ci, co = j.co;
  const int64_t prow = (j.wd + 2) * ci;
  PadImage(j.x + n * j.h * j.wd * ci, j.h, j.wd, ci, pad);
  float* yn = j.y + n * j.h * j.wd * co;
  int64_t g = 0;
#if defined(__AVX512F__)
  for (; g + 64 <= co; g += 64) Group<4, 4>(pad.data(), j.h, j.wd, ci, j.w + g, co, yn + g);
  if (co - g == 48) { Group<3, 4>(pad.data(), j.h, j.wd, ci, j.w + g, co, yn + g); g += 48; }
  if (co - g == 32) { Group<2, 8>(pad.data(), j.h, j.wd, ci, j.w + g, co, yn + g); g += 32; }
  if (co - g == 16) { Group<1, 16>(pad.data(), j.h, j.wd, ci, j.w + g, co, yn + g); g += 16; }
#endif
  // Portable path (no AVX-512, or channels left over): plain loops.
  for (; g < co; ++g) {
    for (int64_t r = 0; r < j.h; ++r) {
      const float* p = pad.data() + r * prow;
      float* out = yn + r * j.wd * co;
      for (int64_t v = 0; v < j.wd; ++v) {
        float s = 0.0f;
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) {
            const float* xp = p + a * prow + (v + b) * ci;
            const float* wq = j.w + (a * 3 + b) * ci * co + g;
            for (int64_t i = 0; i < ci; ++i) s += xp[i] * wq[i * co];
          }
        out[v * co + g] = s;
      }
    }
  }
}

void Drain(ConvJob& j) {
  int64_t n;
  if (!j.queue.Claim(n)) return;
  std::vector<float> pad((j.h + 2) * (j.wd + 2) * j.ci);
  do {
    Image(j, n, pad);
    j.queue.Finish();
  } while (j.queue.Claim(n));
}

ffi::Error Conv3x3Impl(ffi::ThreadPool pool, Buffer4 x, Buffer4 w, Result4 y) {
  const auto xd = x.dimensions();
  const auto wdims = w.dimensions();
  const auto yd = y->dimensions();
  if (wdims[0] != 3 || wdims[1] != 3 || wdims[2] != xd[3] || yd[0] != xd[0] || yd[1] != xd[1] ||
      yd[2] != xd[2] || yd[3] != wdims[3]) {
    return ffi::Error::InvalidArgument(
        "ascl_conv3x3: shapes must be x [N, H, W, Ci], w [3, 3, Ci, Co], y [N, H, W, Co]");
  }
  auto job = std::make_shared<ConvJob>();
  job->x = x.typed_data();
  job->w = w.typed_data();
  job->y = y->typed_data();
  static_cast<ConvDims&>(*job) = DimsOf(xd, wdims[3]);
  if (job->n == 0 || job->h == 0 || job->wd == 0 || job->co == 0) return ffi::Error::Success();
  if (job->ci == 0) {  // no input channels: the sum over them is empty
    std::fill(job->y, job->y + job->n * job->h * job->wd * job->co, 0.0f);
    return ffi::Error::Success();
  }
  job->queue.count = job->n;
  ascl::RunOnPool(pool, job, Drain);
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Weight gradient: dw[a, b, i, o] = sum_{n, h, v} xpad[n, h + a, v + b, i] * dy[n, h, v, o]

struct WgradJob : ConvDims {
  const float* x;
  const float* dy;
  int64_t chunks = 1, per_chunk = 1;
  std::vector<float> part;  // [chunks, 9 * ci * co]: one partial sum per fixed block of images
  ascl::WorkQueue queue;    // one item per block of images
};

#if defined(__AVX512F__)
// IB input channels [i0, i0 + IB) x 16V output channels [g, g + 16V) of tap (a, b), summed over
// all pixels of one image in registers, then added into dw (this chunk's partial sum).
template <int V, int IB>
inline void WBlock(const float* __restrict pad, const float* __restrict dyn, int64_t h, int64_t wd,
                   int64_t ci, int64_t co, int a, int b, int64_t i0, int64_t g,
                   float* __restrict dw) {
  const int64_t prow = (wd + 2) * ci;
  __m512 acc[IB][V];
  for (int k = 0; k < IB; ++k)
    for (int v = 0; v < V; ++v) acc[k][v] = _mm512_setzero_ps();
  for (int64_t r = 0; r < h; ++r) {
    const float* __restrict xr = pad + (r + a) * prow + b * ci + i0;
    const float* __restrict dr = dyn + r * wd * co + g;
    for (int64_t v0 = 0; v0 < wd; ++v0) {
      __m512 d[V];
      for (int v = 0; v < V; ++v) d[v] = _mm512_loadu_ps(dr + v0 * co + 16 * v);
#pragma GCC unroll 16
      for (int k = 0; k < IB; ++k) {
        const __m512 xb = _mm512_set1_ps(xr[v0 * ci + k]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[k][v] = _mm512_fmadd_ps(xb, d[v], acc[k][v]);
      }
    }
  }
  float* out = dw + ((a * 3 + b) * ci + i0) * co + g;
  for (int k = 0; k < IB; ++k)
    for (int v = 0; v < V; ++v) {
      float* o = out + k * co + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[k][v]));
    }
}

// All input channels from i0 on, in blocks of IB (then IB/2, ..., 1).
template <int V, int IB>
void WChannels(const float* pad, const float* dyn, int64_t h, int64_t wd, int64_t ci, int64_t co,
               int a, int b, int64_t i0, int64_t g, float* dw) {
  for (; i0 + IB <= ci; i0 += IB) WBlock<V, IB>(pad, dyn, h, wd, ci, co, a, b, i0, g, dw);
  if constexpr (IB > 1) {
    if (i0 < ci) WChannels<V, IB / 2>(pad, dyn, h, wd, ci, co, a, b, i0, g, dw);
  }
}
#endif

void WgradImage(const WgradJob& j, int64_t n, std::vector<float>& pad, float* dw) {
  PadImage(j.x + n * j.h * j.wd * j.ci, j.h, j.wd, j.ci, pad);
  const float* dyn = j.dy + n * j.h * j.wd * j.co;
  const int64_t ci = j.ci, co = j.co, prow = (j.wd + 2) * ci;
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) {
      int64_t g = 0;
#if defined(__AVX512F__)
      for (; g + 64 <= co; g += 64) WChannels<4, 4>(pad.data(), dyn, j.h, j.wd, ci, co, a, b, 0, g, dw);
      if (co - g == 48) { WChannels<3, 4>(pad.data(), dyn, j.h, j.wd, ci, co, a, b, 0, g, dw); g += 48; }
      if (co - g == 32) { WChannels<2, 8>(pad.data(), dyn, j.h, j.wd, ci, co, a, b, 0, g, dw); g += 32; }
      if (co - g == 16) { WChannels<1, 16>(pad.data(), dyn, j.h, j.wd, ci, co, a, b, 0, g, dw); g += 16; }
#endif
      for (; g < co; ++g) {  // portable path
        for (int64_t i = 0; i < ci; ++i) {
          float s = 0.0f;
          for (int64_t r = 0; r < j.h; ++r)
            for (int64_t v = 0; v < j.wd; ++v)
              s += pad[(r + a) * prow + (v + b) * ci + i] * dyn[(r * j.wd + v) * co + g];
          dw[((a * 3 + b) * ci + i) * co + g] += s;
        }
      }
    }
  }
}

void WgradDrain(WgradJob& j) {
  int64_t k;
  if (!j.queue.Claim(k)) return;
  std::vector<float> pad((j.h + 2) * (j.wd + 2) * j.ci);
  const int64_t size = 9 * j.ci * j.co;
  do {
    float* dw = j.part.data() + k * size;
    const int64_t n1 = std::min(j.n, (k + 1) * j.per_chunk);
    for (int64_t n = k * j.per_chunk; n < n1; ++n) WgradImage(j, n, pad, dw);
    j.queue.Finish();
  } while (j.queue.Claim(k));
}

ffi::Error Conv3x3WgradImpl(ffi::ThreadPool pool, Buffer4 x, Buffer4 dy, Result4 dw) {
  const auto xd = x.dimensions();
  const auto dd = dy.dimensions();
  const auto wdims = dw->dimensions();
  if (dd[0] != xd[0] || dd[1] != xd[1] || dd[2] != xd[2] || wdims[0] != 3 || wdims[1] != 3 ||
      wdims[2] != xd[3] || wdims[3] != dd[3]) {
    return ffi::Error::InvalidArgument(
        "ascl_conv3x3_wgrad: shapes must be x [N, H, W, Ci], dy [N, H, W, Co], dw [3, 3, Ci, Co]");
  }
  auto job = std::make_shared<WgradJob>();
  job->x = x.typed_data();
  job->dy = dy.typed_data();
  static_cast<ConvDims&>(*job) = DimsOf(xd, dd[3]);
  const int64_t size = 9 * job->ci * job->co;
  float* out = dw->typed_data();
  if (job->n == 0 || job->h == 0 || job->wd == 0 || size == 0) {
    std::fill(out, out + size, 0.0f);
    return ffi::Error::Success();
  }
  // Fixed image blocks (kWgradChunks at most) with one partial sum each, added in block order:
  // the result does not depend on which thread ran which block.
  constexpr int64_t kWgradChunks = 8;
  job->chunks = std::min(job->n, kWgradChunks);
  job->per_chunk = (job->n + job->chunks - 1) / job->chunks;
  job->chunks = (job->n + job->per_chunk - 1) / job->per_chunk;
  job->part.assign(job->chunks * size, 0.0f);
  job->queue.count = job->chunks;
  ascl::RunOnPool(pool, job, WgradDrain);
  std::copy(job->part.begin(), job->part.begin() + size, out);
  for (int64_t k = 1; k < job->chunks; ++k) {
    const float* p = job->part.data() + k * size;
    for (int64_t q = 0; q < size; ++q) out[q] += p[q];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AsclConv3x3, Conv3x3Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buffer4>()
                                  .Arg<Buffer4>()
                                  .Ret<Buffer4>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AsclConv3x3Wgrad, Conv3x3WgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Buffer4>()
                                  .Arg<Buffer4>()
                                  .Ret<Buffer4>());

// 1 when this build has the AVX-512 blocks; without them only the plain loops exist, which are
// slower than XLA's convolution, so the Python side does not use the kernel then.
extern "C" int AsclConv3x3Vectorized() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}
