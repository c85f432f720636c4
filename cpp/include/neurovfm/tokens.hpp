// 4x16x16 tokens.
#pragma once

#include <cstdint>

#include "neurovfm/dtype.hpp"

namespace neurovfm {

constexpr std::int64_t kTokD = 4, kTokH = 16, kTokW = 16;
constexpr std::int64_t kTokSize = kTokD * kTokH * kTokW;

// Rearranges a [D, H, W] view (D, H, W multiples of 4, 16, 16) into
// out [N, 1024] (each row the patch [4, 16, 16] flattened) and coords [N, 3]
// (d, h, w token index) in (d, h, w) raster order. out has the view's element
// type; coords may be null.
void tokenize(const VolumeView& in, void* out, std::int32_t* coords, int threads);

// The token background flags [N] (raster order) of a voxel foreground mask
// (uint8, 1 = foreground): 1 when any voxel of the token is background.
void token_background(const VolumeView& foreground, std::uint8_t* out, int threads);

}  // namespace neurovfm
