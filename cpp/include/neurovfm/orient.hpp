// Axis permutation and flips (reorientation) as a strided copy.
#pragma once

#include "neurovfm/dtype.hpp"

namespace neurovfm {

// Copies `in` (any strides, e.g. a permuted/flipped view) into the C-contiguous
// buffer `out` of the same shape and element type.
void copy_contiguous(const VolumeView& in, void* out, int threads);

}  // namespace neurovfm
