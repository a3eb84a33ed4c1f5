// Argument checks for launchers. Each message names the argument and what was
// expected, so a wrong call fails with a sentence, never with a crash.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define FERRUM_CHECK_CUDA(x) \
  TORCH_CHECK((x).is_cuda(), #x ": expected a CUDA tensor, got one on ", (x).device())
#define FERRUM_CHECK_SAME_DEVICE(x, y)                                                  \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
              (x).device(), " and ", (y).device())
#define FERRUM_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x ": expected dtype ", (dt), ", got ", (x).scalar_type())
#define FERRUM_CHECK_SAME_DTYPE(x, y)                                                   \
  TORCH_CHECK((x).scalar_type() == (y).scalar_type(), #x " and " #y                    \
              " must have the same dtype, got ", (x).scalar_type(), " and ", (y).scalar_type())
#define FERRUM_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x ": expected a contiguous tensor")
#define FERRUM_CHECK_DIM(x, n) \
  TORCH_CHECK((x).dim() == (n), #x ": expected ", (n), " dimensions, got shape ", (x).sizes())
#define FERRUM_CHECK_LAST_DIM_CONTIGUOUS(x) \
  TORCH_CHECK((x).stride(-1) == 1, #x ": expected a unit stride in the last dimension")
