/// @brief DEKR's adaptive-activation offsets: a per-pixel, per-group 2×3 affine matrix applied to
/// the regular 3×3 grid, giving the 18 deformable-conv offsets of each group. Shapes, validation
/// and the exact index maps shared by the host and CUDA backends.
///
/// mmpose `AdaptiveActivationBlock.forward` (dekr_head.py), reproduced exactly:
///   affine = transform_matrix_conv(x)                      (B, 6G, H, W)
///   M      = affine.permute(0,2,3,1).view(B, H, W, G, 2, 3)  → M[g][r][q] = channel 6g + 3r + q
///   offset = (M @ R).transpose(4, 5).reshape(B, H, W, 18G)  → channel 18g + 2k + r
///   R      = [[-1,-1,-1, 0,0,0, 1,1,1],   (row 0: the tap's row offset  i − 1, k = 3i + j)
///             [-1, 0, 1,-1,0,1,-1,0,1],   (row 1: the tap's column offset j − 1)
///             [ 1, 1, 1, 1,1,1, 1,1,1]]
/// so offset(g, k, r) = M[g][r][0]·(i−1) + M[g][r][1]·(j−1) + M[g][r][2]. Offset channel 2k+0 is
/// what DeformConv2d reads as dy and 2k+1 as dx (torchvision/mmcv order), so row 0 of M acts on
/// y: the sample point is p + (I + A)·(i−1, j−1) + t with A = M[:, :2], t = M[:, 2].
///
/// In NHWC both tensors are ampkit's native layout: affine (N, H, W, 6G) → offsets (N, H, W, 18G),
/// exactly the deform_conv2d offsets layout with 3×3 taps and offset_groups = G.
/// Gradient contract: dL_daffine is written (=).
#pragma once

#include "ampkit/core/error.hpp"
#include "ampkit/core/tensor.hpp"

namespace ampkit {

/// Validate an affine tensor (N,H,W,6G) against an offsets tensor (N,H,W,18G).
template <class A, class O>
void check_affine_offsets(const char* op, const TensorView<A>& affine, const TensorView<O>& offsets,
                          const char* a_name, const char* o_name) {
  AMPKIT_CHECK(affine.shape.c % 6 == 0, op, ": ", a_name, " has ", affine.shape.c,
               " channels, expected 6 per group (a 2x3 matrix)");
  const std::int64_t groups = affine.shape.c / 6;
  check_shape(op, o_name, offsets, Shape{affine.shape.n, affine.shape.h, affine.shape.w, 18 * groups});
  AMPKIT_CHECK(affine.data != nullptr || affine.numel() == 0, op, ": ", a_name, " has no data");
}

namespace detail {
/// Row (i − 1) and column (j − 1) offsets of tap k = 3i + j of the regular 3×3 grid.
constexpr int affine_grid_dy(int k) { return k / 3 - 1; }
constexpr int affine_grid_dx(int k) { return k % 3 - 1; }
}  // namespace detail

}  // namespace ampkit
