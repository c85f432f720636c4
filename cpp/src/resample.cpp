// Public resampling API: runs the instruction-set variant of the kernels that
// isa() chose (neurovfm/isa.hpp; all variants give identical bytes).
#include "neurovfm/resample.hpp"

#include <algorithm>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <vector>

#include "neurovfm/isa.hpp"

#define NEUROVFM_ISA base
#include "resample_impl.hpp"
#undef NEUROVFM_ISA

namespace neurovfm {

#if defined(NEUROVFM_HAVE_AVX2)
namespace avx2 {
void first_two(DType, const void*, const std::int64_t[3], const std::int64_t[3], const AxisPlan[3],
               const int[2], double*, const std::int64_t[3], int);
void last(DType, const double*, const std::int64_t[3], int, const std::int64_t[3], const AxisPlan[3],
          void*, int);
}  // namespace avx2
#endif

namespace {

struct Variant {
  decltype(&base::first_two) first_two;
  decltype(&base::last) last;
};

const Variant& variant() {
  static const Variant chosen = [] {
#if defined(NEUROVFM_HAVE_AVX2)
    if (isa() == Isa::avx2) return Variant{&avx2::first_two, &avx2::last};
#endif
    return Variant{&base::first_two, &base::last};
  }();
  return chosen;
}

void c_strides(const std::int64_t sh[3], std::int64_t st[3]) {
  st[0] = sh[1] * sh[2];
  st[1] = sh[2];
  st[2] = 1;
}

}  // namespace

// Pass order: last_axis last, the others by how much they shrink the data.
void resample_order(const std::int64_t in_shape[3], const AxisPlan plan[3], int last_axis, int order[3]) {
  int o[3] = {0, 1, 2};
  std::stable_sort(o, o + 3, [&](int x, int y) {
    const bool lx = x == last_axis, ly = y == last_axis;
    if (lx != ly) return ly;  // last_axis goes after everything else
    return static_cast<double>(plan[x].n_out) / static_cast<double>(in_shape[x]) <
           static_cast<double>(plan[y].n_out) / static_cast<double>(in_shape[y]);
  });
  for (int k = 0; k < 3; ++k) order[k] = o[k];
}

namespace {

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

}  // namespace

void bspline_coefficients(double* line, std::int64_t n, std::int64_t stride) {
  if (n <= 1) return;
  std::vector<double> s(static_cast<std::size_t>(n));
  const double z = std::sqrt(3.0) - 2.0;
  const double c0 = (1.0 - z) * (1.0 - 1.0 / z);
  for (std::int64_t i = 0; i < n; ++i) s[static_cast<std::size_t>(i)] = line[i * stride] * c0;
  base::coefficients(s.data(), n);
  for (std::int64_t i = 0; i < n; ++i) line[i * stride] = s[static_cast<std::size_t>(i)];
}

void resample_bspline(const VolumeView& in, const AxisPlan plan[3], void* out, int threads,
                      int last_axis) {
  check_plan(in.shape, plan);
  if (plan[0].n_out == 0 || plan[1].n_out == 0 || plan[2].n_out == 0) return;
  int order[3];
  resample_order(in.shape, plan, last_axis, order);
  std::int64_t mid_shape[3] = {in.shape[0], in.shape[1], in.shape[2]};
  mid_shape[order[0]] = plan[order[0]].n_out;
  mid_shape[order[1]] = plan[order[1]].n_out;
  std::int64_t mst[3];
  c_strides(mid_shape, mst);
  auto mid = make_big<double>(static_cast<std::size_t>(mid_shape[0] * mid_shape[1] * mid_shape[2]));
  variant().first_two(in.dtype, in.data, in.shape, in.strides, plan, order, mid.get(), mst,
                      threads);
  variant().last(in.dtype, mid.get(), mid_shape, order[2], in.shape, plan, out, threads);
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
  resample_order(in_shape_, plan_, stream_axis, order);
  first_axis_ = order[0];
  second_axis_ = order[1];
  for (int k = 0; k < 3; ++k) mid_shape_[k] = (k == stream_axis) ? in_shape[k] : plan[k].n_out;
  // The intermediate of a streamed scan (56 MiB for a 512 x 512 x 140 CT) in plain
  // memory, given back when finish() is done with it: kept in the kernels' pool it would
  // stay resident beside the windows and tokens that follow (peak memory), and fresh
  // huge-page memory for every scan can stall in the kernel's compaction once other work
  // has fragmented memory (bench/bench_gzip.py interleaves with the reference).
  mid_ = make_plain<double>(static_cast<std::size_t>(mid_shape_[0] * mid_shape_[1] * mid_shape_[2]));
  seen_.assign(static_cast<std::size_t>(in_shape[stream_axis]), 0);
}

void StreamResampler::push(const VolumeView& slab, std::int64_t i0, int threads) {
  if (finished_) throw std::invalid_argument("stream resample: push after finish");
  if (slab.dtype != dtype_) throw std::invalid_argument("stream resample: slab has the wrong dtype");
  const int s = stream_axis_;
  for (int k = 0; k < 3; ++k)
    if (k != s && slab.shape[k] != in_shape_[k])
      throw std::invalid_argument("stream resample: slab shape does not match the volume");
  const std::int64_t len = slab.shape[s];
  if (i0 < 0 || len < 0 || i0 > in_shape_[s] - len)  // (i0 + len may overflow)
    throw std::invalid_argument("stream resample: slab outside the volume");
  if (len == 0) return;
  for (std::int64_t i = i0; i < i0 + len; ++i)
    if (seen_[static_cast<std::size_t>(i)])
      throw std::invalid_argument("stream resample: slab pushed twice");
  if (plan_[0].n_out > 0 && plan_[1].n_out > 0 && plan_[2].n_out > 0) {
    std::int64_t mst[3];
    c_strides(mid_shape_, mst);
    const int order[2] = {first_axis_, second_axis_};
    variant().first_two(dtype_, slab.data, slab.shape, slab.strides, plan_, order,
                        mid_.get() + i0 * mst[s], mst, threads);
  }
  for (std::int64_t i = i0; i < i0 + len; ++i) seen_[static_cast<std::size_t>(i)] = 1;
  seen_count_ += len;
}

bool StreamResampler::complete() const { return seen_count_ == in_shape_[stream_axis_]; }

void StreamResampler::finish(void* out, int threads) {
  if (!complete()) throw std::logic_error("stream resample: not every slice was pushed");
  if (finished_) throw std::invalid_argument("stream resample: finish called twice");
  finished_ = true;
  if (plan_[0].n_out == 0 || plan_[1].n_out == 0 || plan_[2].n_out == 0) return;
  variant().last(dtype_, mid_.get(), mid_shape_, stream_axis_, in_shape_, plan_, out, threads);
  mid_.reset();  // plain memory (see the constructor): back to the system now
}

}  // namespace neurovfm
