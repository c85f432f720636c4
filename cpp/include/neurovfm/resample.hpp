// Separable cubic B-spline resampling with ITK ResampleImageFilter semantics.
#pragma once

#include <cstdint>

#include "neurovfm/dtype.hpp"

namespace neurovfm {

// One axis of the resampling grid. Output index j (0 <= j < n_out) of the
// cropped result sits at continuous input index (start + j) * t / s, computed
// in double precision; outside [-0.5, n_in - 0.5) the output voxel is 0.
struct AxisPlan {
  std::int64_t n_out = 0;
  std::int64_t start = 0;
  double t = 1.0;  // output spacing
  double s = 1.0;  // input spacing
};

// Resamples `in` (shape n_in per axis, any strides) into the C-contiguous
// buffer `out` of shape plan[k].n_out and element type in.dtype: a recursive
// cubic B-spline prefilter with mirror boundaries in double precision, 4-tap
// evaluation with mirror index folding, then clamp to the type's range and
// truncation toward zero. Axes are processed one at a time, the one that
// shrinks the data most first. Bit-identical for any thread count.
void resample_bspline(const VolumeView& in, const AxisPlan plan[3], void* out, int threads);

// Prefilter one line in place (exposed for tests): B-spline coefficients of
// `n` samples spaced `stride` apart.
void bspline_coefficients(double* line, std::int64_t n, std::int64_t stride);

}  // namespace neurovfm
