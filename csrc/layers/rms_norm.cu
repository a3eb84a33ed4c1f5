// Launchers for rms_norm and fused_add_rms_norm.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/launch.h"
#include "layers/rms_norm.cuh"
#include "ops.h"

namespace {

void check_norm_args(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight) {
  FERRUM_CHECK_CUDA(input);
  FERRUM_CHECK_SAME_DEVICE(out, input);
  FERRUM_CHECK_SAME_DEVICE(weight, input);
  FERRUM_CHECK_SAME_DTYPE(out, input);
  FERRUM_CHECK_SAME_DTYPE(weight, input);
  FERRUM_CHECK_CONTIGUOUS(out);
  FERRUM_CHECK_CONTIGUOUS(weight);
  FERRUM_CHECK_DIM(weight, 1);
  TORCH_CHECK(weight.size(0) == input.size(-1), "weight: expected shape [", input.size(-1),
              "] (the hidden size of input), got ", weight.sizes());
  TORCH_CHECK(out.sizes() == input.sizes(), "out: expected shape ", input.sizes(), ", got ", out.sizes());
}

}  // namespace

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_norm_args(out, input, weight);
  const int64_t in_stride = ferrum::row_stride(input, "input");
  const int hidden = static_cast<int>(input.size(-1));
  const int64_t rows = input.numel() / std::max<int64_t>(hidden, 1);
  if (rows == 0 || hidden == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_FLOAT_TYPES(input.scalar_type(), "rms_norm", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = ferrum::rows_vectorizable(input.data_ptr(), in_stride, hidden, kVec, sizeof(scalar_t)) &&
                     ferrum::is_aligned16(weight.data_ptr()) && ferrum::is_aligned16(out.data_ptr());
    auto* o = reinterpret_cast<scalar_t*>(out.data_ptr());
    const auto* x = reinterpret_cast<const scalar_t*>(input.data_ptr());
    const auto* w = reinterpret_cast<const scalar_t*>(weight.data_ptr());
    if (vec) {
      ferrum::rms_norm_kernel<scalar_t, kVec><<<rows, ferrum::threads_for(hidden / kVec), 0, stream>>>(
          o, x, in_stride, w, hidden, static_cast<float>(eps));
    } else {
      ferrum::rms_norm_kernel<scalar_t, 1><<<rows, ferrum::threads_for(hidden), 0, stream>>>(
          o, x, in_stride, w, hidden, static_cast<float>(eps));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fused_add_rms_norm(at::Tensor& out, const at::Tensor& input, at::Tensor& residual,
                        const at::Tensor& weight, double eps) {
  check_norm_args(out, input, weight);
  FERRUM_CHECK_SAME_DEVICE(residual, input);
  FERRUM_CHECK_SAME_DTYPE(residual, input);
  TORCH_CHECK(residual.sizes() == input.sizes(), "residual: expected shape ", input.sizes(), ", got ",
              residual.sizes());
  const int64_t in_stride = ferrum::row_stride(input, "input");
  const int64_t res_stride = ferrum::row_stride(residual, "residual");
  const int hidden = static_cast<int>(input.size(-1));
  const int64_t rows = input.numel() / std::max<int64_t>(hidden, 1);
  if (rows == 0 || hidden == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_FLOAT_TYPES(input.scalar_type(), "fused_add_rms_norm", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec =
        ferrum::rows_vectorizable(input.data_ptr(), in_stride, hidden, kVec, sizeof(scalar_t)) &&
        ferrum::rows_vectorizable(residual.data_ptr(), res_stride, hidden, kVec, sizeof(scalar_t)) &&
        ferrum::is_aligned16(weight.data_ptr()) && ferrum::is_aligned16(out.data_ptr());
    auto* o = reinterpret_cast<scalar_t*>(out.data_ptr());
    const auto* x = reinterpret_cast<const scalar_t*>(input.data_ptr());
    auto* r = reinterpret_cast<scalar_t*>(residual.data_ptr());
    const auto* w = reinterpret_cast<const scalar_t*>(weight.data_ptr());
    if (vec) {
      ferrum::fused_add_rms_norm_kernel<scalar_t, kVec><<<rows, ferrum::threads_for(hidden / kVec), 0, stream>>>(
          o, x, in_stride, r, res_stride, w, hidden, static_cast<float>(eps));
    } else {
      ferrum::fused_add_rms_norm_kernel<scalar_t, 1><<<rows, ferrum::threads_for(hidden), 0, stream>>>(
          o, x, in_stride, r, res_stride, w, hidden, static_cast<float>(eps));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
