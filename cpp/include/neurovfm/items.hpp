// Training items from the uint8 cache: crop, H/W swap, flips, uint8 -> float32
// (or uint8) and 4x16x16 tokenisation in one pass, with the token background
// flags and coordinates of the result.
#pragma once

#include <cstdint>

#include "neurovfm/dtype.hpp"

namespace neurovfm {

// What to do to a cached volume. All boxes are in tokens of the cached grid
// [D/4, H/16, W/16]. The order is: crop the box, then (transpose_hw) swap the
// H and W axes of the crop, then flip each axis of the result (flip[0..2] =
// output axes d, h, w). Flips are voxel flips: the patches are flipped inside.
struct ItemPlan {
  std::int64_t crop_start[3] = {0, 0, 0};
  std::int64_t crop_size[3] = {0, 0, 0};
  bool transpose_hw = false;
  bool flip[3] = {false, false, false};
};

enum class ItemLayout : int {
  tokens = 0,  // out [N, 1024]: each row the patch [4, 16, 16] of the result
  volume = 1,  // out [D', H', W']: the result as a volume
};

enum class ItemType : int {
  f32 = 0,  // float(x) / 255.0f, exactly
  u8 = 1,   // the cached bytes
};

// Output token grid of a plan: (crop d, crop h, crop w), h and w swapped when transpose_hw.
void item_grid(const ItemPlan& plan, std::int64_t grid[3]);

// Builds one item from a uint8 volume view (shape a multiple of 4x16x16; any
// strides) and, optionally, its token background flags (1 = the token holds a
// background voxel; shape the token grid, uint8). Writes out (layout/type as
// asked, C-contiguous), out_token_background [N] (the flags of the output
// tokens, in raster order; skipped when token_background.data or
// out_token_background is null) and out_coords [N, 3] (the (d, h, w) index of
// each output token; may be null). Throws std::invalid_argument on a bad shape or box. Every output
// token is written by exactly one thread: identical bytes for any thread count.
void make_item(const VolumeView& volume, const VolumeView& token_background, const ItemPlan& plan,
               ItemLayout layout, ItemType type, void* out, std::uint8_t* out_token_background,
               std::int32_t* out_coords, int threads);

}  // namespace neurovfm
