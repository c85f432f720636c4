// Separable cubic B-spline resampling with ITK ResampleImageFilter semantics.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "neurovfm/dtype.hpp"
#include "neurovfm/parallel.hpp"

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
// truncation toward zero. Axes are processed one at a time, in the order of
// resample_order(in.shape, plan, last_axis): last_axis last, the others by
// how much they shrink the data (by default, -1, all three so). The pipeline
// passes the slice axis as last_axis at every entry point (docs/numbers.md,
// "Resampling order"), so that a scan gives the same bytes however it arrives.
// Bit-identical for any thread count.
void resample_bspline(const VolumeView& in, const AxisPlan plan[3], void* out, int threads,
                      int last_axis = -1);

// The pass order resample_bspline uses: axes sorted by n_out / n_in (the one
// that shrinks most first; ties by axis index), last_axis (0..2) moved last.
void resample_order(const std::int64_t in_shape[3], const AxisPlan plan[3], int last_axis, int order[3]);

// Resampling of a volume that arrives in slabs along one axis (e.g. while it
// is being decompressed): push() resamples the two other axes of each slab
// into a double-precision intermediate; finish() resamples the stream axis.
// Gives exactly the bytes of resample_bspline(..., last_axis = stream_axis):
// the pipeline's bytes when the stream axis is the slice axis (the only case
// it streams). finish() gives the intermediate back to the system at once.
class StreamResampler {
 public:
  StreamResampler(DType dtype, const std::int64_t in_shape[3], int stream_axis,
                  const AxisPlan plan[3]);
  // `slab` covers input indices [i0, i0 + slab.shape[stream_axis]) along the
  // stream axis and the whole extent of the other axes.
  void push(const VolumeView& slab, std::int64_t i0, int threads);
  // True once every index along the stream axis has been pushed.
  bool complete() const;
  // Writes the C-contiguous result (shape plan[k].n_out, element type dtype).
  // Once only: it frees the intermediate volume (then push and finish throw).
  void finish(void* out, int threads);
  bool finished() const { return finished_; }
  DType dtype() const { return dtype_; }

 private:
  DType dtype_;
  std::int64_t in_shape_[3];
  int stream_axis_;
  int first_axis_, second_axis_;
  AxisPlan plan_[3];
  std::int64_t mid_shape_[3];
  BigBuffer<double> mid_;
  std::vector<unsigned char> seen_;
  std::int64_t seen_count_ = 0;
  bool finished_ = false;
};

// Prefilter one line in place (exposed for tests): B-spline coefficients of
// `n` samples spaced `stride` apart.
void bspline_coefficients(double* line, std::int64_t n, std::int64_t stride);

}  // namespace neurovfm
