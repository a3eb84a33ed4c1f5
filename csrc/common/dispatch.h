// dtype dispatch: maps an at::ScalarType onto the CUDA element type that the
// torch-free kernels are templated on (__half, __nv_bfloat16, float).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define FERRUM_CASE_TYPE(ENUM, CTYPE, ...) \
  case at::ScalarType::ENUM: {             \
    using scalar_t = CTYPE;                \
    __VA_ARGS__();                         \
    break;                                 \
  }

// fp16 and bf16: the activation types every op supports.
#define FERRUM_DISPATCH_HALF_TYPES(TYPE, NAME, ...)                                     \
  switch (TYPE) {                                                                       \
    FERRUM_CASE_TYPE(Half, __half, __VA_ARGS__)                                         \
    FERRUM_CASE_TYPE(BFloat16, __nv_bfloat16, __VA_ARGS__)                              \
    default:                                                                            \
      TORCH_CHECK(false, NAME, ": unsupported dtype ", TYPE, " (expected float16 or bfloat16)"); \
  }

// fp16, bf16 and fp32.
#define FERRUM_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                                    \
  switch (TYPE) {                                                                       \
    FERRUM_CASE_TYPE(Half, __half, __VA_ARGS__)                                         \
    FERRUM_CASE_TYPE(BFloat16, __nv_bfloat16, __VA_ARGS__)                              \
    FERRUM_CASE_TYPE(Float, float, __VA_ARGS__)                                         \
    default:                                                                            \
      TORCH_CHECK(false, NAME, ": unsupported dtype ", TYPE,                            \
                  " (expected float16, bfloat16 or float32)");                          \
  }
