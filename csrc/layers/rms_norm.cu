// Launchers for rms_norm and fused_add_rms_norm.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/launch.h"
#include "layers/rms_norm.cuh"
#include "ops.h"

namespace {

// 16-byte packs each thread keeps in registers. The CTA count is the row count, so
// the choice is about waves: 2 packs x 256 threads (32 registers) fits 8 CTAs per SM
// for [4096, 4096] bf16; the fused variant needs more registers and keeps 4 x 128.
template <bool HAS_RESIDUAL>
constexpr int kItersInRegisters = HAS_RESIDUAL ? 4 : 2;

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

// Picks the pack width (16 bytes when every row allows it) and the register
// caching depth, then launches one CTA per row.
template <typename T, bool HAS_RESIDUAL>
void launch_rms_norm(at::Tensor& out, const at::Tensor& input, int64_t in_stride, at::Tensor* residual,
                     int64_t res_stride, const at::Tensor& weight, double eps, cudaStream_t stream) {
  const int hidden = static_cast<int>(input.size(-1));
  const int64_t rows = input.numel() / hidden;
  constexpr int kVec = 16 / sizeof(T);
  bool vec = ferrum::rows_vectorizable(input.data_ptr(), in_stride, hidden, kVec, sizeof(T)) &&
             ferrum::is_aligned16(weight.data_ptr()) && ferrum::is_aligned16(out.data_ptr());
  if (HAS_RESIDUAL) {
    vec = vec && ferrum::rows_vectorizable(residual->data_ptr(), res_stride, hidden, kVec, sizeof(T));
  }
  auto* o = reinterpret_cast<T*>(out.data_ptr());
  const auto* x = reinterpret_cast<const T*>(input.data_ptr());
  auto* r = HAS_RESIDUAL ? reinterpret_cast<T*>(residual->data_ptr()) : nullptr;
  const auto* w = reinterpret_cast<const T*>(weight.data_ptr());
  const float e = static_cast<float>(eps);

  auto launch = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    const int packs = hidden / V;
    constexpr int kIters = kItersInRegisters<HAS_RESIDUAL>;
    const int cached_threads = ferrum::threads_for((packs + kIters - 1) / kIters);
    if (packs <= kIters * cached_threads) {
      ferrum::rms_norm_kernel<T, V, kIters, HAS_RESIDUAL>
          <<<rows, cached_threads, 0, stream>>>(o, x, in_stride, r, res_stride, w, hidden, e);
    } else {
      ferrum::rms_norm_kernel<T, V, 0, HAS_RESIDUAL>
          <<<rows, 1024, 0, stream>>>(o, x, in_stride, r, res_stride, w, hidden, e);
    }
  };
  if (vec) {
    launch(std::integral_constant<int, kVec>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

}  // namespace

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_norm_args(out, input, weight);
  const int64_t in_stride = ferrum::row_stride(input, "input");
  if (input.numel() == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_FLOAT_TYPES(input.scalar_type(), "rms_norm", [&] {
    launch_rms_norm<scalar_t, false>(out, input, in_stride, nullptr, 0, weight, eps, stream);
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
  if (input.numel() == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_FLOAT_TYPES(input.scalar_type(), "fused_add_rms_norm", [&] {
    launch_rms_norm<scalar_t, true>(out, input, in_stride, &residual, res_stride, weight, eps, stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
