#include "neurovfm/resample.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "neurovfm/parallel.hpp"

namespace neurovfm {
namespace {

constexpr std::int64_t kLanes = 8;  // lines filtered together (one cache line of doubles)
constexpr double kTolerance = 1e-10;  // ITK BSplineDecompositionImageFilter default

double pole() { return std::sqrt(3.0) - 2.0; }

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

// Prefilter `lanes` interleaved lines of length n: s[i * lanes + l].
// Follows ITK's BSplineDecompositionImageFilter::DataToCoefficients1D exactly,
// including its truncated causal initialisation.
template <std::int64_t Lanes>
void prefilter_lanes(double* s, std::int64_t n) {
  if (n <= 1) return;
  const double z = pole();
  const double c0 = (1.0 - z) * (1.0 - 1.0 / z);
  for (std::int64_t i = 0; i < n * Lanes; ++i) s[i] *= c0;

  const auto horizon =
      static_cast<std::int64_t>(std::ceil(std::log(kTolerance) / std::log(std::fabs(z))));
  if (horizon < n) {
    double sum[Lanes];
    for (std::int64_t l = 0; l < Lanes; ++l) sum[l] = s[l];
    double zn = z;
    for (std::int64_t i = 1; i < horizon; ++i) {
      for (std::int64_t l = 0; l < Lanes; ++l) sum[l] += zn * s[i * Lanes + l];
      zn *= z;
    }
    for (std::int64_t l = 0; l < Lanes; ++l) s[l] = sum[l];
  } else {
    const double iz = 1.0 / z;
    double z2n = std::pow(z, static_cast<double>(n - 1));
    double sum[Lanes];
    for (std::int64_t l = 0; l < Lanes; ++l) sum[l] = s[l] + z2n * s[(n - 1) * Lanes + l];
    z2n *= z2n * iz;
    double zn = z;
    for (std::int64_t i = 1; i <= n - 2; ++i) {
      const double f = zn + z2n;
      for (std::int64_t l = 0; l < Lanes; ++l) sum[l] += f * s[i * Lanes + l];
      zn *= z;
      z2n *= iz;
    }
    for (std::int64_t l = 0; l < Lanes; ++l) s[l] = sum[l] / (1.0 - zn * zn);
  }
  for (std::int64_t i = 1; i < n; ++i)
    for (std::int64_t l = 0; l < Lanes; ++l) s[i * Lanes + l] += z * s[(i - 1) * Lanes + l];
  const double a = z / (z * z - 1.0);
  for (std::int64_t l = 0; l < Lanes; ++l)
    s[(n - 1) * Lanes + l] = a * (z * s[(n - 2) * Lanes + l] + s[(n - 1) * Lanes + l]);
  for (std::int64_t i = n - 2; i >= 0; --i)
    for (std::int64_t l = 0; l < Lanes; ++l)
      s[i * Lanes + l] = z * (s[(i + 1) * Lanes + l] - s[i * Lanes + l]);
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

struct Pass {
  int axis;
  const std::vector<Taps>* taps;
  // Inside flags of the other axes' output indices (final pass only).
  const std::vector<Taps>* other_taps[3] = {nullptr, nullptr, nullptr};
};

// One separable pass along `axis`: prefilter every line and evaluate the taps.
// `in` has shape in_shape and element strides in_str; `out` is C-contiguous with
// shape in_shape except out_shape[axis] = taps.size().
template <typename In, typename Out, bool Final>
void run_pass(const In* in, const std::int64_t in_shape[3], const std::int64_t in_str[3],
              const Pass& pass, Out* out, int threads) {
  const int a = pass.axis;
  const auto& taps = *pass.taps;
  int b = (a + 1) % 3, c = (a + 2) % 3;
  // Lanes run along the other axis with the smaller input stride.
  if (std::llabs(in_str[b]) < std::llabs(in_str[c])) std::swap(b, c);
  const int lane_axis = c, outer_axis = b;
  const std::int64_t n = in_shape[a];
  const std::int64_t n_out = static_cast<std::int64_t>(taps.size());
  const std::int64_t n_lane = in_shape[lane_axis];
  const std::int64_t n_outer = in_shape[outer_axis];

  std::int64_t out_shape[3] = {in_shape[0], in_shape[1], in_shape[2]};
  out_shape[a] = n_out;
  const std::int64_t out_str[3] = {out_shape[1] * out_shape[2], out_shape[2], 1};

  const std::int64_t lane_blocks = (n_lane + kLanes - 1) / kLanes;
  const std::size_t units = static_cast<std::size_t>(n_outer * lane_blocks);
  const std::size_t grain =
      std::max<std::size_t>(1, units / (static_cast<std::size_t>(std::max(threads, 1)) * 16));

  parallel_for(units, threads, grain, [&](std::size_t begin, std::size_t end) {
    std::vector<double> scratch(static_cast<std::size_t>(n * kLanes));
    double* s = scratch.data();
    for (std::size_t u = begin; u < end; ++u) {
      const std::int64_t o = static_cast<std::int64_t>(u) / lane_blocks;
      const std::int64_t l0 = (static_cast<std::int64_t>(u) % lane_blocks) * kLanes;
      const std::int64_t nl = std::min<std::int64_t>(kLanes, n_lane - l0);
      const In* base = in + o * in_str[outer_axis] + l0 * in_str[lane_axis];
      for (std::int64_t i = 0; i < n; ++i) {
        const In* p = base + i * in_str[a];
        std::int64_t l = 0;
        for (; l < nl; ++l) s[i * kLanes + l] = static_cast<double>(p[l * in_str[lane_axis]]);
        for (; l < kLanes; ++l) s[i * kLanes + l] = 0.0;
      }
      prefilter_lanes<kLanes>(s, n);
      Out* obase = out + o * out_str[outer_axis] + l0 * out_str[lane_axis];
      bool outer_inside = true;
      if constexpr (Final) {
        outer_inside = (*pass.other_taps[outer_axis])[static_cast<std::size_t>(o)].inside;
      }
      for (std::int64_t j = 0; j < n_out; ++j) {
        const Taps& tp = taps[static_cast<std::size_t>(j)];
        Out* po = obase + j * out_str[a];
        const double* s0 = s + tp.idx[0] * kLanes;
        const double* s1 = s + tp.idx[1] * kLanes;
        const double* s2 = s + tp.idx[2] * kLanes;
        const double* s3 = s + tp.idx[3] * kLanes;
        for (std::int64_t l = 0; l < nl; ++l) {
          const double v = tp.w[0] * s0[l] + tp.w[1] * s1[l] + tp.w[2] * s2[l] + tp.w[3] * s3[l];
          if constexpr (Final) {
            const bool inside =
                tp.inside && outer_inside &&
                (*pass.other_taps[lane_axis])[static_cast<std::size_t>(l0 + l)].inside;
            po[l * out_str[lane_axis]] = inside ? cast_out<Out>(v) : Out(0);
          } else {
            po[l * out_str[lane_axis]] = static_cast<Out>(v);
          }
        }
      }
    }
  });
}

template <typename T>
void resample_typed(const VolumeView& in, const AxisPlan plan[3], T* out, int threads) {
  std::vector<Taps> taps[3];
  for (int k = 0; k < 3; ++k) taps[k] = make_taps(in.shape[k], plan[k]);

  // Process the axis that shrinks the data most first.
  int order[3] = {0, 1, 2};
  std::stable_sort(order, order + 3, [&](int x, int y) {
    return static_cast<double>(plan[x].n_out) / static_cast<double>(in.shape[x]) <
           static_cast<double>(plan[y].n_out) / static_cast<double>(in.shape[y]);
  });

  std::int64_t shape[3] = {in.shape[0], in.shape[1], in.shape[2]};
  auto contiguous = [](const std::int64_t sh[3], std::int64_t st[3]) {
    st[0] = sh[1] * sh[2];
    st[1] = sh[2];
    st[2] = 1;
  };

  std::vector<double> buf_a, buf_b;
  Pass pass;
  // Pass 1: typed input (any strides) to double.
  pass.axis = order[0];
  pass.taps = &taps[order[0]];
  std::int64_t shape1[3] = {shape[0], shape[1], shape[2]};
  shape1[order[0]] = plan[order[0]].n_out;
  buf_a.resize(static_cast<std::size_t>(shape1[0] * shape1[1] * shape1[2]));
  run_pass<T, double, false>(static_cast<const T*>(in.data), shape, in.strides, pass, buf_a.data(),
                             threads);
  // Pass 2: double to double.
  std::int64_t st1[3];
  contiguous(shape1, st1);
  pass.axis = order[1];
  pass.taps = &taps[order[1]];
  std::int64_t shape2[3] = {shape1[0], shape1[1], shape1[2]};
  shape2[order[1]] = plan[order[1]].n_out;
  buf_b.resize(static_cast<std::size_t>(shape2[0] * shape2[1] * shape2[2]));
  run_pass<double, double, false>(buf_a.data(), shape1, st1, pass, buf_b.data(), threads);
  std::vector<double>().swap(buf_a);
  // Pass 3: double to the output type, with the outside-the-image zeros.
  std::int64_t st2[3];
  contiguous(shape2, st2);
  pass.axis = order[2];
  pass.taps = &taps[order[2]];
  for (int k = 0; k < 3; ++k) pass.other_taps[k] = &taps[k];
  run_pass<double, T, true>(buf_b.data(), shape2, st2, pass, out, threads);
}

}  // namespace

void bspline_coefficients(double* line, std::int64_t n, std::int64_t stride) {
  std::vector<double> s(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) s[static_cast<std::size_t>(i)] = line[i * stride];
  prefilter_lanes<1>(s.data(), n);
  for (std::int64_t i = 0; i < n; ++i) line[i * stride] = s[static_cast<std::size_t>(i)];
}

void resample_bspline(const VolumeView& in, const AxisPlan plan[3], void* out, int threads) {
  for (int k = 0; k < 3; ++k) {
    if (in.shape[k] <= 0) throw std::invalid_argument("resample: input has an empty axis");
    if (plan[k].n_out < 0 || plan[k].start < 0)
      throw std::invalid_argument("resample: negative output size or start");
    if (!(plan[k].t > 0.0) || !(plan[k].s > 0.0) || !std::isfinite(plan[k].t) ||
        !std::isfinite(plan[k].s))
      throw std::invalid_argument("resample: spacings must be positive and finite");
  }
  if (plan[0].n_out == 0 || plan[1].n_out == 0 || plan[2].n_out == 0) return;
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    resample_typed<T>(in, plan, static_cast<T*>(out), threads);
  });
}

}  // namespace neurovfm
