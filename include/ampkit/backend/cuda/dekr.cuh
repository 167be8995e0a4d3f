/// @brief Everything the DEKR model and loss need on the CUDA backend, in one include:
/// the CUDA ops, the model (models/dekr.hpp), the loss and checkpoints.
#pragma once

#include "ampkit/backend/cuda/affine_offsets.cuh"
#include "ampkit/backend/cuda/batch_norm.cuh"
#include "ampkit/backend/cuda/concat.cuh"
#include "ampkit/backend/cuda/conv2d.cuh"
#include "ampkit/backend/cuda/deform_conv2d.cuh"
#include "ampkit/backend/cuda/dekr_loss.cuh"
#include "ampkit/backend/cuda/elementwise.cuh"
#include "ampkit/backend/cuda/fill.cuh"
#include "ampkit/backend/cuda/resize_bilinear.cuh"
#include "ampkit/backend/cuda/upsample_nearest.cuh"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/nn/checkpoint.hpp"
