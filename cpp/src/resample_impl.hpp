// Implementation of the resampling kernels, compiled once per instruction set
// (resample.cpp: baseline; resample_avx2.cpp: -mavx2) into namespace
// neurovfm::NEUROVFM_ISA. No FMA and no fast-math in any variant, so every
// variant performs the same IEEE operations and gives identical bytes.
// Included only by those two files.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "neurovfm/parallel.hpp"
#include "neurovfm/resample.hpp"

#ifndef NEUROVFM_ISA
#error "define NEUROVFM_ISA before including resample_impl.hpp"
#endif

namespace neurovfm {
namespace NEUROVFM_ISA {
namespace {


constexpr std::int64_t kMinLanes = 8;              // at least one cache line of doubles
#ifndef NEUROVFM_SCRATCH_KB
#define NEUROVFM_SCRATCH_KB 256
#endif
constexpr std::int64_t kScratchBytes = NEUROVFM_SCRATCH_KB * 1024;  // per-thread block of lines, sized for L2
#ifndef NEUROVFM_CHUNK_KB
#define NEUROVFM_CHUNK_KB 8192
#endif
// Size of the first pass's intermediate for one chunk of first_two_passes.
constexpr std::int64_t kChunkBytes = std::int64_t(NEUROVFM_CHUNK_KB) * 1024;
constexpr double kTolerance = 1e-10;                // ITK BSplineDecompositionImageFilter default

double pole() { return std::sqrt(3.0) - 2.0; }

std::int64_t horizon() {
  return static_cast<std::int64_t>(std::ceil(std::log(kTolerance) / std::log(std::fabs(pole()))));
}

struct Taps {
  std::int64_t idx[4];
  double w[4];
  bool inside;
};

// ITK mirror folding of an evaluation index into [0, n).
std::int64_t fold(std::int64_t i, std::int64_t n) {
  if (n == 1) return 0;
  const std::int64_t period = 2 * n - 2;
  i = (i < 0) ? (-i - period * ((-i) / period)) : (i - period * (i / period));
  if (i >= n) i = period - i;
  return i;
}

std::vector<Taps> make_taps(std::int64_t n_in, const AxisPlan& p) {
  std::vector<Taps> taps(static_cast<std::size_t>(p.n_out));
  const double lo = -0.5;
  const double hi = static_cast<double>(n_in) - 0.5;
  for (std::int64_t j = 0; j < p.n_out; ++j) {
    Taps& tp = taps[static_cast<std::size_t>(j)];
    const double x = static_cast<double>(p.start + j) * p.t / p.s;
    tp.inside = (x >= lo) && (x < hi);
    if (!tp.inside) {
      for (int k = 0; k < 4; ++k) {
        tp.idx[k] = 0;
        tp.w[k] = 0.0;
      }
      continue;
    }
    const std::int64_t base = static_cast<std::int64_t>(std::floor(x)) - 1;
    const double w = x - static_cast<double>(base + 1);
    // ITK BSplineInterpolateImageFunction::SetInterpolationWeights, order 3.
    tp.w[3] = (1.0 / 6.0) * w * w * w;
    tp.w[0] = (1.0 / 6.0) + 0.5 * w * (w - 1.0) - tp.w[3];
    tp.w[2] = w + tp.w[0] - 2.0 * tp.w[3];
    tp.w[1] = 1.0 - tp.w[0] - tp.w[2] - tp.w[3];
    for (int k = 0; k < 4; ++k) tp.idx[k] = fold(base + k, n_in);
  }
  return taps;
}

// The rest of ITK's BSplineDecompositionImageFilter::DataToCoefficients1D on
// `lanes` interleaved lines s[i * lanes + l] of length n whose rows have
// already been multiplied by the gain: causal initialisation (ITK's truncated
// sum, or its full mirror sum for short lines), causal and anticausal
// recursions. Rows [0, rows_ready) are in s; each further row i is produced by
// read_causal(i), which must write row i = c0 * x_i + z * row (i - 1) (its
// read and causal step in one sweep).
template <typename ReadCausal>
void prefilter_lanes(double* s, std::int64_t n, std::int64_t lanes, double* sum, std::int64_t rows_ready,
                     ReadCausal&& read_causal) {
  if (n <= 1) {
    return;
  }
  const double z = pole();
  const std::int64_t hz = horizon();
  if (hz < n) {
    for (std::int64_t l = 0; l < lanes; ++l) sum[l] = s[l];
    double zn = z;
    for (std::int64_t i = 1; i < hz; ++i) {
      const double* row = s + i * lanes;
      for (std::int64_t l = 0; l < lanes; ++l) sum[l] += zn * row[l];
      zn *= z;
    }
    for (std::int64_t l = 0; l < lanes; ++l) s[l] = sum[l];
  } else {
    const double iz = 1.0 / z;
    double z2n = std::pow(z, static_cast<double>(n - 1));
    for (std::int64_t l = 0; l < lanes; ++l) sum[l] = s[l] + z2n * s[(n - 1) * lanes + l];
    z2n *= z2n * iz;
    double zn = z;
    for (std::int64_t i = 1; i <= n - 2; ++i) {
      const double f = zn + z2n;
      const double* row = s + i * lanes;
      for (std::int64_t l = 0; l < lanes; ++l) sum[l] += f * row[l];
      zn *= z;
      z2n *= iz;
    }
    const double d = 1.0 - zn * zn;
    for (std::int64_t l = 0; l < lanes; ++l) s[l] = sum[l] / d;
  }
  const std::int64_t ready = std::min(rows_ready, n);
  for (std::int64_t i = 1; i < ready; ++i) {
    double* row = s + i * lanes;
    const double* prev = row - lanes;
    for (std::int64_t l = 0; l < lanes; ++l) row[l] += z * prev[l];
  }
  for (std::int64_t i = std::max<std::int64_t>(ready, 1); i < n; ++i) read_causal(i);
  const double a = z / (z * z - 1.0);
  for (std::int64_t l = 0; l < lanes; ++l)
    s[(n - 1) * lanes + l] = a * (z * s[(n - 2) * lanes + l] + s[(n - 1) * lanes + l]);
  for (std::int64_t i = n - 2; i >= 0; --i) {
    double* row = s + i * lanes;
    const double* next = row + lanes;
    for (std::int64_t l = 0; l < lanes; ++l) row[l] = z * (next[l] - row[l]);
  }
}

void prefilter_block(double* s, std::int64_t n, std::int64_t lanes, double* sum) {
  prefilter_lanes(s, n, lanes, sum, n, [](std::int64_t) {});
}

void eval_row(const double* s, std::int64_t lanes, const Taps& tp, double* out,
                              std::int64_t nl) {
  const double* s0 = s + tp.idx[0] * lanes;
  const double* s1 = s + tp.idx[1] * lanes;
  const double* s2 = s + tp.idx[2] * lanes;
  const double* s3 = s + tp.idx[3] * lanes;
  const double w0 = tp.w[0], w1 = tp.w[1], w2 = tp.w[2], w3 = tp.w[3];
  for (std::int64_t l = 0; l < nl; ++l) out[l] = w0 * s0[l] + w1 * s1[l] + w2 * s2[l] + w3 * s3[l];
}

// ITK ResampleImageFilter's cast: clamp to the output type's range, then
// static_cast (truncation toward zero for integers).
template <typename T>
T cast_out(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    const double lo = static_cast<double>(std::numeric_limits<T>::lowest());
    const double hi = static_cast<double>(std::numeric_limits<T>::max());
    if (v < lo) return std::numeric_limits<T>::lowest();
    if (v > hi) return std::numeric_limits<T>::max();
    if constexpr (std::is_integral_v<T>) {
      if (std::isnan(v)) return T(0);
    }
    return static_cast<T>(v);
  }
}

// Rows of a pass are read kAhead rows ahead into the cache: along the pass axis
// they lie far apart (a slice apart for the storage axis), where the hardware
// prefetcher does not follow, and a narrow block of lanes would otherwise wait
// on every row. A hint only: no effect on any value.
constexpr std::int64_t kAhead = 8;

template <typename In>
inline void prefetch_row(const In* p, std::int64_t nl, std::int64_t ls) {
#if defined(__GNUC__) || defined(__clang__)
  if (ls == 1) {
    const char* c = reinterpret_cast<const char*>(p);
    const std::int64_t bytes = nl * static_cast<std::int64_t>(sizeof(In));
    for (std::int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
    __builtin_prefetch(c + bytes - 1);
  }
#else
  (void)p;
  (void)nl;
  (void)ls;
#endif
}

// One separable pass along `axis`: prefilter every line and evaluate the taps.
// `in` has shape in_shape and element strides in_str; `out` has shape in_shape
// with out_shape[axis] = taps.size() and element strides out_str. In the final
// pass (inside != null) a voxel is 0 unless its index is inside on all axes.
template <typename In, typename Out>
void run_pass(const In* in, const std::int64_t in_shape[3], const std::int64_t in_str[3], int a,
              const std::vector<Taps>& taps, Out* out, const std::int64_t out_str[3],
              const std::vector<Taps>* const* inside, int threads) {
  int b = (a + 1) % 3, c = (a + 2) % 3;
  // Lanes run along the other axis with the smaller input stride.
  if (std::llabs(in_str[b]) < std::llabs(in_str[c])) std::swap(b, c);
  const int lane_axis = c, outer_axis = b;
  const std::int64_t n = in_shape[a];
  const std::int64_t n_out = static_cast<std::int64_t>(taps.size());
  const std::int64_t n_lane = in_shape[lane_axis];
  const std::int64_t n_outer = in_shape[outer_axis];
  if (n <= 0 || n_out <= 0 || n_lane <= 0 || n_outer <= 0) return;

  // Lanes per block: as many as fit the scratch budget (whole rows when the
  // lane axis is contiguous, so that reading the input streams through memory).
  std::int64_t target = std::max<std::int64_t>(kMinLanes, kScratchBytes / (8 * (n + 2)));
  target = (target / kMinLanes) * kMinLanes;
  const std::int64_t w = std::min<std::int64_t>(target, ((n_lane + kMinLanes - 1) / kMinLanes) * kMinLanes);
  // A short lane axis (a chunk of first_two_passes): a block takes `group`
  // neighbouring outer indices side by side, so that it still reads many rows at
  // once. Lanes never interact, so the grouping changes no value.
  const std::int64_t group =
      inside ? 1 : std::max<std::int64_t>(1, std::min<std::int64_t>(n_outer, (target + w / 2) / w));
  const std::int64_t lanes = group * w;
  const std::int64_t lane_blocks = (n_lane + w - 1) / w;
  const std::int64_t outer_blocks = (n_outer + group - 1) / group;
  const std::size_t units = static_cast<std::size_t>(outer_blocks * lane_blocks);
  const std::size_t grain =
      std::max<std::size_t>(1, units / (static_cast<std::size_t>(clamp_threads(threads)) * 8));

  const double z = pole();
  const double c0 = (1.0 - z) * (1.0 - 1.0 / z);
  const std::int64_t hz = horizon();

  parallel_for(units, threads, grain, [&](std::size_t begin, std::size_t end) {
    // Per-thread scratch, kept from one block (and chunk, and pass) to the next:
    // every value is written before it is read.
    thread_local std::vector<double> scratch;
    thread_local std::vector<unsigned char> lane_ok_buf;
    const std::size_t need = static_cast<std::size_t>((n + 2) * lanes);
    if (scratch.size() < need) scratch.resize(need);
    if (lane_ok_buf.size() < static_cast<std::size_t>(lanes)) lane_ok_buf.resize(static_cast<std::size_t>(lanes));
    double* s = scratch.data();
    double* sum = s + n * lanes;
    double* row_out = sum + lanes;
    unsigned char* lane_ok = lane_ok_buf.data();
    for (std::size_t u = begin; u < end; ++u) {
      const std::int64_t o = (static_cast<std::int64_t>(u) / lane_blocks) * group;
      const std::int64_t gn = std::min<std::int64_t>(group, n_outer - o);
      const std::int64_t l0 = (static_cast<std::int64_t>(u) % lane_blocks) * w;
      const std::int64_t nl = std::min<std::int64_t>(w, n_lane - l0);
      const In* base = in + o * in_str[outer_axis] + l0 * in_str[lane_axis];
      const std::int64_t ls = in_str[lane_axis];
      const std::int64_t gs = in_str[outer_axis];
      // Row i of the block (each group's lanes [g * w, g * w + nl)), multiplied by
      // the gain (ITK: copy, then *= c0); padding lanes are 0.
      auto gather = [&](std::int64_t i) {
        for (std::int64_t g = 0; g < group; ++g) {
          double* row = s + i * lanes + g * w;
          std::int64_t l = 0;
          if (g < gn) {
            const In* p = base + g * gs + i * in_str[a];
            if (i + kAhead < n) prefetch_row(p + kAhead * in_str[a], nl, ls);
            if (ls == 1) {
              for (; l < nl; ++l) row[l] = static_cast<double>(p[l]) * c0;
            } else if (ls == -1) {  // a flipped contiguous axis
              for (; l < nl; ++l) row[l] = static_cast<double>(p[-l]) * c0;
            } else {
              for (; l < nl; ++l) row[l] = static_cast<double>(p[l * ls]) * c0;
            }
          }
          for (; l < w; ++l) row[l] = 0.0;
        }
      };
      if (n == 1) {
        // A single sample: ITK leaves the coefficient equal to the data.
        for (std::int64_t g = 0; g < group; ++g) {
          const In* p = base + g * gs;
          for (std::int64_t l = 0; l < w; ++l)
            s[g * w + l] = (g < gn && l < nl) ? static_cast<double>(p[l * ls]) : 0.0;
        }
      } else if (hz < n) {
        for (std::int64_t i = 0; i < hz; ++i) gather(i);
        // Rows >= hz are read, multiplied by the gain and run through the causal
        // recursion in one sweep: c0 * x + z * prev is ITK's two steps exactly.
        prefilter_lanes(s, n, lanes, sum, hz, [&](std::int64_t i) {
          for (std::int64_t g = 0; g < group; ++g) {
            double* row = s + i * lanes + g * w;
            const double* prev = row - lanes;
            std::int64_t l = 0;
            if (g < gn) {
              const In* p = base + g * gs + i * in_str[a];
              if (i + kAhead < n) prefetch_row(p + kAhead * in_str[a], nl, ls);
              if (ls == 1) {
                for (; l < nl; ++l) row[l] = static_cast<double>(p[l]) * c0 + z * prev[l];
              } else if (ls == -1) {
                for (; l < nl; ++l) row[l] = static_cast<double>(p[-l]) * c0 + z * prev[l];
              } else {
                for (; l < nl; ++l) row[l] = static_cast<double>(p[l * ls]) * c0 + z * prev[l];
              }
            }
            for (; l < w; ++l) row[l] = 0.0;
          }
        });
      } else {
        for (std::int64_t i = 0; i < n; ++i) gather(i);
        prefilter_block(s, n, lanes, sum);
      }
      Out* obase = out + o * out_str[outer_axis] + l0 * out_str[lane_axis];
      const std::int64_t os = out_str[lane_axis];
      const std::int64_t ogs = out_str[outer_axis];
      bool outer_inside = true;
      if (inside) {  // (group == 1)
        outer_inside = (*inside[outer_axis])[static_cast<std::size_t>(o)].inside;
        const auto& lane_in = *inside[lane_axis];
        for (std::int64_t l = 0; l < nl; ++l) lane_ok[l] = lane_in[static_cast<std::size_t>(l0 + l)].inside;
      }
      for (std::int64_t j = 0; j < n_out; ++j) {
        const Taps& tp = taps[static_cast<std::size_t>(j)];
        Out* po = obase + j * out_str[a];
        if (inside) {
          if (!(tp.inside && outer_inside)) {
            for (std::int64_t l = 0; l < nl; ++l) po[l * os] = Out(0);
            continue;
          }
          eval_row(s, lanes, tp, row_out, nl);
          for (std::int64_t l = 0; l < nl; ++l) po[l * os] = lane_ok[l] ? cast_out<Out>(row_out[l]) : Out(0);
        } else if (os == 1 && std::is_same_v<Out, double>) {
          for (std::int64_t g = 0; g < gn; ++g)
            eval_row(s + g * w, lanes, tp, reinterpret_cast<double*>(po + g * ogs), nl);
        } else {
          eval_row(s, lanes, tp, row_out, lanes);
          for (std::int64_t g = 0; g < gn; ++g)
            for (std::int64_t l = 0; l < nl; ++l) po[g * ogs + l * os] = static_cast<Out>(row_out[g * w + l]);
        }
      }
    }
  });
}

void c_strides(const std::int64_t sh[3], std::int64_t st[3]) {
  st[0] = sh[1] * sh[2];
  st[1] = sh[2];
  st[2] = 1;
}

// Two passes (order[0], order[1]) from a typed view into a double buffer with
// the given strides. Neither pass mixes indices along the third axis, so the
// volume is cut into chunks along it and both passes run chunk by chunk: the
// intermediate of the first pass is one chunk (about kChunkBytes, reused and
// warm in cache for the second) instead of the whole volume. Every line sees
// the same operations as in one whole-volume pass (lanes are independent), so
// the bytes do not depend on the chunking or the thread count.
template <typename T>
void first_two_passes(const T* in, const std::int64_t shape[3], const std::int64_t strides[3],
                      const std::vector<Taps> taps[3], const int order[2], double* out,
                      const std::int64_t out_str[3], int threads) {
  const int third = 3 - order[0] - order[1];
  std::int64_t shape1[3] = {shape[0], shape[1], shape[2]};
  shape1[order[0]] = static_cast<std::int64_t>(taps[order[0]].size());
  const std::int64_t n3 = shape[third];
  const std::int64_t per = shape1[order[0]] * shape1[order[1]];  // doubles per index along `third`
  if (n3 <= 0 || per <= 0) return;
  // Chunks of about kChunkBytes (each pass splits its chunk among the threads).
  // Smaller chunks cost time (narrower rows of the input per block: +30 % CPU at
  // 4 MiB, +15 % at 8 MiB on a 512x512x140 CT, against the whole volume at once);
  // 8 MiB keeps that CT at about one input copy plus the output in memory.
  std::int64_t chunk = std::max<std::int64_t>(1, kChunkBytes / (8 * per));
  chunk = std::min(chunk, n3);
  auto buf = make_big<double>(static_cast<std::size_t>(per * chunk));
  for (std::int64_t c0 = 0; c0 < n3; c0 += chunk) {
    const std::int64_t cn = std::min(chunk, n3 - c0);
    std::int64_t sh_in[3] = {shape[0], shape[1], shape[2]};
    sh_in[third] = cn;
    std::int64_t sh1[3] = {shape1[0], shape1[1], shape1[2]};
    sh1[third] = cn;
    std::int64_t st1[3];
    c_strides(sh1, st1);
    // Uninitialised: the pass writes every element (first touch in parallel).
    run_pass<T, double>(in + c0 * strides[third], sh_in, strides, order[0], taps[order[0]], buf.get(), st1,
                        nullptr, threads);
    run_pass<double, double>(buf.get(), sh1, st1, order[1], taps[order[1]], out + c0 * out_str[third], out_str,
                             nullptr, threads);
  }
}

template <typename T>
void last_pass(const double* mid, const std::int64_t mid_shape[3], int axis,
               const std::vector<Taps> taps[3], T* out, int threads) {
  std::int64_t st[3], out_shape[3] = {mid_shape[0], mid_shape[1], mid_shape[2]};
  c_strides(mid_shape, st);
  out_shape[axis] = static_cast<std::int64_t>(taps[axis].size());
  std::int64_t ost[3];
  c_strides(out_shape, ost);
  const std::vector<Taps>* inside[3] = {&taps[0], &taps[1], &taps[2]};
  run_pass<double, T>(mid, mid_shape, st, axis, taps[axis], out, ost, inside, threads);
}


}  // namespace

// Passes order[0] and order[1] from a typed view into a double buffer.
void first_two(DType dtype, const void* in, const std::int64_t shape[3], const std::int64_t strides[3],
               const AxisPlan plan[3], const int order[2], double* out, const std::int64_t out_str[3],
               int threads) {
  std::vector<Taps> taps[3];
  taps[order[0]] = make_taps(shape[order[0]], plan[order[0]]);
  taps[order[1]] = make_taps(shape[order[1]], plan[order[1]]);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    first_two_passes<T>(static_cast<const T*>(in), shape, strides, taps, order, out, out_str, threads);
  });
}

// The last pass along `axis` of the double intermediate `mid`, into the typed
// output, with the outside-the-image zeros. in_shape is the original input's.
void last(DType dtype, const double* mid, const std::int64_t mid_shape[3], int axis,
          const std::int64_t in_shape[3], const AxisPlan plan[3], void* out, int threads) {
  std::vector<Taps> taps[3];
  for (int k = 0; k < 3; ++k) taps[k] = make_taps(in_shape[k], plan[k]);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    last_pass<T>(mid, mid_shape, axis, taps, static_cast<T*>(out), threads);
  });
}

void coefficients(double* s, std::int64_t n) {
  if (n <= 1) return;
  std::vector<double> sum(1);
  prefilter_block(s, n, 1, sum.data());
}

}  // namespace NEUROVFM_ISA
}  // namespace neurovfm
