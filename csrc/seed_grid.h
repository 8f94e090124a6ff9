#pragma once
// The mask's geometry and where seeds may sit and what their blocks cover, in logical indices
// (mask_logic.h), host and device.
#include <cstdint>

#include "host_device.h"
#include "small_divider.h"

namespace dropblock {

constexpr int kMaxSpatialDims = 3;

// Geometry of the mask: planes of D x H x W with clamped block sizes.
struct MaskGeometry {
  int64_t planes;
  int64_t size[kMaxSpatialDims];   // D, H, W
  int64_t block[kMaxSpatialDims];  // bd, bh, bw, each in [1, size]
  C10_HOST_DEVICE int64_t plane_numel() const { return size[0] * size[1] * size[2]; }
  // Number of positions along dimension d where a block fits.
  C10_HOST_DEVICE int64_t seed_extent(int d) const { return size[d] - block[d] + 1; }
};

// Where seeds may sit and what their blocks cover, in logical indices.
struct SeedGrid {
  int64_t total;        // planes * D * H * W
  int64_t plane_numel;  // D * H * W
  int64_t size[kMaxSpatialDims];
  int64_t extent[kMaxSpatialDims];  // positions where a block fits: size - block + 1
  int64_t block[kMaxSpatialDims];
  // Below 2^32 logical indices (nearly always), positions are found with these dividers.
  bool small;
  SmallDivider by_plane, by_width, by_height;
};

C10_HOST_DEVICE inline SeedGrid make_seed_grid(const MaskGeometry& g) {
  SeedGrid s{};
  s.plane_numel = g.plane_numel();
  s.total = g.planes * s.plane_numel;
  for (int d = 0; d < kMaxSpatialDims; ++d) {
    s.size[d] = g.size[d];
    s.extent[d] = g.seed_extent(d);
    s.block[d] = g.block[d];
  }
  s.small = s.total > 0 && s.total < (int64_t(1) << 32);
  if (s.small) {
    s.by_plane = make_small_divider(static_cast<uint64_t>(s.plane_numel));
    s.by_width = make_small_divider(static_cast<uint64_t>(s.size[2]));
    s.by_height = make_small_divider(static_cast<uint64_t>(s.size[1]));
  }
  return s;
}

// Offset of logical index g in its plane: g % (D * H * W).
C10_HOST_DEVICE inline int64_t plane_offset(const SeedGrid& s, int64_t g) {
  return s.small ? g - static_cast<int64_t>(divide(s.by_plane, static_cast<uint64_t>(g))) * s.plane_numel
                 : g % s.plane_numel;
}

// Position (z, y, x) of logical index g in its plane.
C10_HOST_DEVICE inline void position_in_plane(const SeedGrid& s, int64_t g, int64_t& z, int64_t& y, int64_t& x) {
  const int64_t H = s.size[1], W = s.size[2];
  if (s.small) {
    const int64_t r = plane_offset(s, g);
    const int64_t line = static_cast<int64_t>(divide(s.by_width, static_cast<uint64_t>(r)));
    x = r - line * W;
    z = static_cast<int64_t>(divide(s.by_height, static_cast<uint64_t>(line)));
    y = line - z * H;
    return;
  }
  const int64_t r = plane_offset(s, g);
  const int64_t line = r / W;
  x = r - line * W;
  z = line / H;
  y = line - z * H;
}

// Calls fits(i, n_fit) for each row of the positions [g0, g0 + n) where a block fits anywhere:
// positions g0 + i .. g0 + i + n_fit - 1 (n_fit >= 1) share that row and a block fits at each. A
// walk row by row from one division, for the chunk walks of the CPU and the CUDA kernels.
template <typename F>
C10_HOST_DEVICE inline void for_each_fitting_run(const SeedGrid& s, int64_t g0, int64_t n, const F& fits) {
  const int64_t H = s.size[1], W = s.size[2];
  int64_t z, y, x;
  position_in_plane(s, g0, z, y, x);
  for (int64_t i = 0; i < n;) {
    const int64_t in_row = W - x < n - i ? W - x : n - i;  // positions [i, i + in_row) share a row
    if (y < s.extent[1] && z < s.extent[0] && x < s.extent[2]) {
      fits(i, s.extent[2] - x < in_row ? s.extent[2] - x : in_row);
    }
    i += in_row;
    x = 0;
    if (++y == H) {
      y = 0;
      if (++z == s.size[0]) {
        z = 0;
      }
    }
  }
}

// How far past its seed a block reaches, in logical indices: the words a worker shares with
// the workers before it.
C10_HOST_DEVICE inline int64_t block_reach(const SeedGrid& s) {
  return ((s.block[0] - 1) * s.size[1] + (s.block[1] - 1)) * s.size[2] + (s.block[2] - 1);
}

}  // namespace dropblock
