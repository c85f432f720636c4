// Intensity kernels: CT windows, MRI percentile normalisation, foreground masks.
#pragma once

#include <cstdint>

#include "neurovfm/dtype.hpp"

namespace neurovfm {

struct Window {
  double width;
  double level;
};

// `in` is a [D, H, W] view (any strides). For each window w, out[w] receives
// (clip(x, lo, hi) - lo) / (hi - lo + 1e-8), lo = L - W/2, hi = L + W/2, in
// double (the reference's order of operations), as
// float32 (C order), or with `quantize` as uint8(value * 255) by truncation of
// the double value, never of its float32 rounding (the cache's values,
// docs/numbers.md). token_background (may be null) receives per
// 4x16x16 token 1 when any voxel is background (x <= fg_threshold); foreground (may be
// null) the voxel foreground mask (x > fg_threshold). D, H, W must be
// multiples of 4, 16, 16 when token_background is given.
void ct_windows(const VolumeView& in, const Window* windows, int n_windows, void* const* out,
                bool quantize, double fg_threshold, std::uint8_t* token_background,
                std::uint8_t* foreground, int threads);

// Exact percentiles (NumPy's default linear interpolation) of all voxels,
// values taken as double; q in percent. Also returns the minimum and maximum.
// O(n): counting for 8/16-bit types, selection otherwise. Any NaN makes every
// result NaN, as in NumPy.
void percentiles(const VolumeView& in, const double* q, int nq, double* result, double* vmin,
                 double* vmax, int threads);

// MRI: out = (clip(x, lo, hi) - mn) / (mx - mn + 1e-8) in double, as float32
// (or quantised uint8, as ct_windows). The caller passes mn and mx, the
// minimum and maximum of clip(x, lo, hi) (i.e. max(lo, min(x)) and
// min(hi, max(x))); foreground is x > fg_threshold.
void mri_normalise(const VolumeView& in, double lo, double hi, double mn, double mx,
                   double fg_threshold, void* out, bool quantize, std::uint8_t* token_background,
                   std::uint8_t* foreground, int threads);

}  // namespace neurovfm

namespace neurovfm {

// Cache loading: out[i] = float(in[i]) / 255.0f.
void dequantize_u8(const std::uint8_t* in, float* out, std::int64_t n, int threads);

}  // namespace neurovfm
