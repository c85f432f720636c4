#include "neurovfm/resample.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "neurovfm/parallel.hpp"

// Runtime dispatch to AVX2 for the hot double-precision loops (no FMA: the
// arithmetic stays identical to the baseline build, operation for operation).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(NEUROVFM_NO_CLONES)
#define NEUROVFM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NEUROVFM_CLONES
#endif

namespace neurovfm {
namespace {

constexpr std::int64_t kMinLanes = 8;              // at least one cache line of doubles
#ifndef NEUROVFM_SCRATCH_KB
#define NEUROVFM_SCRATCH_KB 256
#endif
constexpr std::int64_t kScratchBytes = NEUROVFM_SCRATCH_KB * 1024;  // per-thread block of lines, sized for L2
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
// recursions. `rows_ready` rows are gathered; each further row is produced by
// gather(i) (which writes row i, gain applied) just before its causal step, so
// that reading the input and the causal recursion share one sweep.
template <typename Gather>
void prefilter_lanes(double* s, std::int64_t n, std::int64_t lanes, double* sum, std::int64_t rows_ready,
                     Gather&& gather) {
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
  for (std::int64_t i = 1; i < n; ++i) {
    if (i >= rows_ready) gather(i);
    double* row = s + i * lanes;
    const double* prev = row - lanes;
    for (std::int64_t l = 0; l < lanes; ++l) row[l] += z * prev[l];
  }
  const double a = z / (z * z - 1.0);
  for (std::int64_t l = 0; l < lanes; ++l)
    s[(n - 1) * lanes + l] = a * (z * s[(n - 2) * lanes + l] + s[(n - 1) * lanes + l]);
  for (std::int64_t i = n - 2; i >= 0; --i) {
    double* row = s + i * lanes;
    const double* next = row + lanes;
    for (std::int64_t l = 0; l < lanes; ++l) row[l] = z * (next[l] - row[l]);
  }
}

// Hot loops, compiled for AVX2 too (runtime dispatch).
NEUROVFM_CLONES void prefilter_block(double* s, std::int64_t n, std::int64_t lanes, double* sum) {
  prefilter_lanes(s, n, lanes, sum, n, [](std::int64_t) {});
}

NEUROVFM_CLONES void eval_row(const double* s, std::int64_t lanes, const Taps& tp, double* out,
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
  std::int64_t lanes = std::max<std::int64_t>(kMinLanes, kScratchBytes / (8 * (n + 2)));
  lanes = std::min<std::int64_t>(lanes, ((n_lane + kMinLanes - 1) / kMinLanes) * kMinLanes);
  lanes = (lanes / kMinLanes) * kMinLanes;
  const std::int64_t lane_blocks = (n_lane + lanes - 1) / lanes;
  const std::size_t units = static_cast<std::size_t>(n_outer * lane_blocks);
  const std::size_t grain =
      std::max<std::size_t>(1, units / (static_cast<std::size_t>(std::max(threads, 1)) * 8));

  const double z = pole();
  const double c0 = (1.0 - z) * (1.0 - 1.0 / z);
  const std::int64_t hz = horizon();

  parallel_for(units, threads, grain, [&](std::size_t begin, std::size_t end) {
    std::vector<double> scratch(static_cast<std::size_t>((n + 2) * lanes));
    double* s = scratch.data();
    double* sum = s + n * lanes;
    double* row_out = sum + lanes;
    for (std::size_t u = begin; u < end; ++u) {
      const std::int64_t o = static_cast<std::int64_t>(u) / lane_blocks;
      const std::int64_t l0 = (static_cast<std::int64_t>(u) % lane_blocks) * lanes;
      const std::int64_t nl = std::min<std::int64_t>(lanes, n_lane - l0);
      const In* base = in + o * in_str[outer_axis] + l0 * in_str[lane_axis];
      const std::int64_t ls = in_str[lane_axis];
      // Row i of the block, multiplied by the gain (ITK: copy, then *= c0).
      auto gather = [&](std::int64_t i) {
        const In* p = base + i * in_str[a];
        double* row = s + i * lanes;
        std::int64_t l = 0;
        if (ls == 1) {
          for (; l < nl; ++l) row[l] = static_cast<double>(p[l]) * c0;
        } else {
          for (; l < nl; ++l) row[l] = static_cast<double>(p[l * ls]) * c0;
        }
        for (; l < lanes; ++l) row[l] = 0.0;
      };
      if (n == 1) {
        // A single sample: ITK leaves the coefficient equal to the data.
        const In* p = base;
        for (std::int64_t l = 0; l < lanes; ++l) s[l] = l < nl ? static_cast<double>(p[l * ls]) : 0.0;
      } else if (hz < n) {
        for (std::int64_t i = 0; i < hz; ++i) gather(i);
        prefilter_lanes(s, n, lanes, sum, hz, gather);
      } else {
        for (std::int64_t i = 0; i < n; ++i) gather(i);
        prefilter_block(s, n, lanes, sum);
      }
      Out* obase = out + o * out_str[outer_axis] + l0 * out_str[lane_axis];
      const std::int64_t os = out_str[lane_axis];
      bool outer_inside = true;
      if (inside) outer_inside = (*inside[outer_axis])[static_cast<std::size_t>(o)].inside;
      for (std::int64_t j = 0; j < n_out; ++j) {
        const Taps& tp = taps[static_cast<std::size_t>(j)];
        Out* po = obase + j * out_str[a];
        eval_row(s, lanes, tp, row_out, nl);
        if (inside) {
          const auto& lane_in = *inside[lane_axis];
          for (std::int64_t l = 0; l < nl; ++l) {
            const bool ok = tp.inside && outer_inside && lane_in[static_cast<std::size_t>(l0 + l)].inside;
            po[l * os] = ok ? cast_out<Out>(row_out[l]) : Out(0);
          }
        } else if (os == 1 && std::is_same_v<Out, double>) {
          std::copy(row_out, row_out + nl, po);
        } else {
          for (std::int64_t l = 0; l < nl; ++l) po[l * os] = static_cast<Out>(row_out[l]);
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

// Pass order: last_axis last, the others by how much they shrink the data.
void pass_order(const std::int64_t in_shape[3], const AxisPlan plan[3], int last_axis, int order[3]) {
  int o[3] = {0, 1, 2};
  std::stable_sort(o, o + 3, [&](int x, int y) {
    const bool lx = x == last_axis, ly = y == last_axis;
    if (lx != ly) return ly;  // last_axis goes after everything else
    return static_cast<double>(plan[x].n_out) / static_cast<double>(in_shape[x]) <
           static_cast<double>(plan[y].n_out) / static_cast<double>(in_shape[y]);
  });
  for (int k = 0; k < 3; ++k) order[k] = o[k];
}

void check_plan(const std::int64_t shape[3], const AxisPlan plan[3]) {
  for (int k = 0; k < 3; ++k) {
    if (shape[k] <= 0) throw std::invalid_argument("resample: input has an empty axis");
    if (plan[k].n_out < 0 || plan[k].start < 0)
      throw std::invalid_argument("resample: negative output size or start");
    if (!(plan[k].t > 0.0) || !(plan[k].s > 0.0) || !std::isfinite(plan[k].t) ||
        !std::isfinite(plan[k].s))
      throw std::invalid_argument("resample: spacings must be positive and finite");
  }
}

// Two passes (order[0], order[1]) from a typed view into a double buffer with
// the given strides.
template <typename T>
void first_two_passes(const T* in, const std::int64_t shape[3], const std::int64_t strides[3],
                      const std::vector<Taps> taps[3], const int order[2], double* out,
                      const std::int64_t out_str[3], int threads) {
  std::int64_t shape1[3] = {shape[0], shape[1], shape[2]};
  shape1[order[0]] = static_cast<std::int64_t>(taps[order[0]].size());
  std::int64_t st1[3];
  c_strides(shape1, st1);
  std::vector<double> buf(static_cast<std::size_t>(shape1[0] * shape1[1] * shape1[2]));
  run_pass<T, double>(in, shape, strides, order[0], taps[order[0]], buf.data(), st1, nullptr, threads);
  run_pass<double, double>(buf.data(), shape1, st1, order[1], taps[order[1]], out, out_str, nullptr,
                           threads);
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

void bspline_coefficients(double* line, std::int64_t n, std::int64_t stride) {
  if (n <= 1) return;
  std::vector<double> s(static_cast<std::size_t>(n + 1));
  const double z = pole();
  const double c0 = (1.0 - z) * (1.0 - 1.0 / z);
  for (std::int64_t i = 0; i < n; ++i) s[static_cast<std::size_t>(i)] = line[i * stride] * c0;
  prefilter_block(s.data(), n, 1, s.data() + n);
  for (std::int64_t i = 0; i < n; ++i) line[i * stride] = s[static_cast<std::size_t>(i)];
}

void resample_bspline(const VolumeView& in, const AxisPlan plan[3], void* out, int threads,
                      int last_axis) {
  check_plan(in.shape, plan);
  if (plan[0].n_out == 0 || plan[1].n_out == 0 || plan[2].n_out == 0) return;
  std::vector<Taps> taps[3];
  for (int k = 0; k < 3; ++k) taps[k] = make_taps(in.shape[k], plan[k]);
  int order[3];
  pass_order(in.shape, plan, last_axis, order);
  std::int64_t mid_shape[3] = {in.shape[0], in.shape[1], in.shape[2]};
  mid_shape[order[0]] = plan[order[0]].n_out;
  mid_shape[order[1]] = plan[order[1]].n_out;
  std::int64_t mst[3];
  c_strides(mid_shape, mst);
  std::vector<double> mid(static_cast<std::size_t>(mid_shape[0] * mid_shape[1] * mid_shape[2]));
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    first_two_passes<T>(static_cast<const T*>(in.data), in.shape, in.strides, taps, order, mid.data(),
                        mst, threads);
    last_pass<T>(mid.data(), mid_shape, order[2], taps, static_cast<T*>(out), threads);
  });
}

StreamResampler::StreamResampler(DType dtype, const std::int64_t in_shape[3], int stream_axis,
                                 const AxisPlan plan[3])
    : dtype_(dtype), stream_axis_(stream_axis) {
  if (stream_axis < 0 || stream_axis > 2) throw std::invalid_argument("stream axis must be 0, 1 or 2");
  check_plan(in_shape, plan);
  for (int k = 0; k < 3; ++k) {
    in_shape_[k] = in_shape[k];
    plan_[k] = plan[k];
  }
  int order[3];
  pass_order(in_shape_, plan_, stream_axis, order);
  first_axis_ = order[0];
  second_axis_ = order[1];
  for (int k = 0; k < 3; ++k) mid_shape_[k] = (k == stream_axis) ? in_shape[k] : plan[k].n_out;
  mid_.assign(static_cast<std::size_t>(mid_shape_[0] * mid_shape_[1] * mid_shape_[2]), 0.0);
  seen_.assign(static_cast<std::size_t>(in_shape[stream_axis]), 0);
}

void StreamResampler::push(const VolumeView& slab, std::int64_t i0, int threads) {
  if (slab.dtype != dtype_) throw std::invalid_argument("stream resample: slab has the wrong dtype");
  const int s = stream_axis_;
  for (int k = 0; k < 3; ++k)
    if (k != s && slab.shape[k] != in_shape_[k])
      throw std::invalid_argument("stream resample: slab shape does not match the volume");
  const std::int64_t len = slab.shape[s];
  if (i0 < 0 || len < 0 || i0 + len > in_shape_[s])
    throw std::invalid_argument("stream resample: slab outside the volume");
  if (len == 0) return;
  for (std::int64_t i = i0; i < i0 + len; ++i)
    if (seen_[static_cast<std::size_t>(i)])
      throw std::invalid_argument("stream resample: slab pushed twice");
  if (mid_.empty()) return;
  std::vector<Taps> taps[3];
  for (int k = 0; k < 3; ++k)
    if (k != s) taps[k] = make_taps(in_shape_[k], plan_[k]);
  std::int64_t mst[3];
  c_strides(mid_shape_, mst);
  double* dst = mid_.data() + i0 * mst[s];
  const int order[2] = {first_axis_, second_axis_};
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    first_two_passes<T>(static_cast<const T*>(slab.data), slab.shape, slab.strides, taps, order, dst, mst,
                        threads);
  });
  for (std::int64_t i = i0; i < i0 + len; ++i) seen_[static_cast<std::size_t>(i)] = 1;
  seen_count_ += len;
}

bool StreamResampler::complete() const { return seen_count_ == in_shape_[stream_axis_]; }

void StreamResampler::finish(void* out, int threads) {
  if (!complete()) throw std::logic_error("stream resample: not every slice was pushed");
  if (plan_[0].n_out == 0 || plan_[1].n_out == 0 || plan_[2].n_out == 0) return;
  std::vector<Taps> taps[3];
  for (int k = 0; k < 3; ++k) taps[k] = make_taps(in_shape_[k], plan_[k]);
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    last_pass<T>(mid_.data(), mid_shape_, stream_axis_, taps, static_cast<T*>(out), threads);
  });
  std::vector<double>().swap(mid_);
}

}  // namespace neurovfm
