#pragma once
// The DropBlock mask law, written once for host and device.
//
// Everything that decides WHICH elements are dropped lives here (in the headers included below),
// so the CPU kernels and the CUDA kernels cannot drift apart: the mask is a pure function of (key,
// logical index).
//
// The law, for an input (N, C, *spatial) viewed as planes of D x H x W (1d/2d inputs pad the
// leading spatial sizes with 1):
//   * plane q is (n, c) for per-channel masks, n for shared masks;
//   * b = min(block_size, size) per dimension; a seed may only sit at 0 <= i <= size - b;
//   * the logical index of element (q, z, y, x) is g = q * D*H*W + (z*H + y)*W + x;
//   * seeds are drawn per chunk of kChunk = 256 logical indices (chunk c: [256c, 256c + 256)),
//     each position a seed independently with probability gamma: chunk c draws its count
//     K ~ Binomial(256, gamma) by comparing word 0 of Philox(counter = (c, 0), key) with a table
//     of cumulative bounds rint(CDF(k) * 2^32) (make_count_table), then K distinct positions as
//     the first distinct bytes of the words that follow (words 1..3, then the words of
//     Philox((c, 1), key), (c, 2), ...), or, for K > 128, the 256 - K positions that are not seeds;
//   * only seeds where a whole block fits count (0 <= i <= size - b in every dimension);
//   * a seed at (z, y, x) drops the block [z, z+bd) x [y, y+bh) x [x, x+bw);
//   * the packed mask holds one KEEP bit per logical element: bit g % 64 of 64-bit word g / 64;
//     kernels set it to all ones and clear the blocks of the seeds (clear_chunk_blocks).
//
// Where it is written (each header includes what it uses; include the narrowest that serves):
//   philox.h        Philox4x32-10 and its key;
//   seed_draw.h     the draw per chunk: the count table (IEEE double steps that round alike on
//                   every device), the seed count, the positions (seeds_of_chunk);
//   small_divider.h division by a fixed divisor without a divide instruction;
//   seed_grid.h     the geometry (MaskGeometry, SeedGrid), positions of logical indices, block_reach;
//   packed_mask.h   the packed mask's words: clears, keep bits, popcounts, keep_scale;
//   block_clear.h   block expansion: the blocks of a chunk's seeds cleared (clear_chunk_blocks);
//   host_device.h   C10_HOST_DEVICE and the DROPBLOCK_UNROLL hint.
#include "host_device.h"
#include "philox.h"
#include "seed_draw.h"
#include "small_divider.h"
#include "seed_grid.h"
#include "packed_mask.h"
#include "block_clear.h"
