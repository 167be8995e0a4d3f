/// @brief Everything the DEKR model and loss need on the host backend, in one include:
/// the host ops, the model (models/dekr.hpp), the loss and checkpoints.
#pragma once

#include "ampkit/backend/host/affine_offsets.hpp"
#include "ampkit/backend/host/batch_norm.hpp"
#include "ampkit/backend/host/concat.hpp"
#include "ampkit/backend/host/conv2d.hpp"
#include "ampkit/backend/host/deform_conv2d.hpp"
#include "ampkit/backend/host/dekr_loss.hpp"
#include "ampkit/backend/host/elementwise.hpp"
#include "ampkit/backend/host/fill.hpp"
#include "ampkit/backend/host/resize_bilinear.hpp"
#include "ampkit/backend/host/upsample_nearest.hpp"
#include "ampkit/loss/dekr_loss.hpp"
#include "ampkit/models/dekr.hpp"
#include "ampkit/nn/checkpoint.hpp"
