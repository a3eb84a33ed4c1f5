// Launcher for silu_and_mul.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/launch.h"
#include "layers/silu_and_mul.cuh"
#include "ops.h"

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  FERRUM_CHECK_CUDA(input);
  FERRUM_CHECK_SAME_DEVICE(out, input);
  FERRUM_CHECK_SAME_DTYPE(out, input);
  FERRUM_CHECK_CONTIGUOUS(out);
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0,
              "input: expected an even last dimension [..., 2 * d], got shape ", input.sizes());
  const int64_t d = input.size(-1) / 2;
  auto expected = input.sizes().vec();
  expected.back() = d;
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), "out: expected shape ", at::IntArrayRef(expected),
              ", got ", out.sizes());
  const int64_t in_stride = ferrum::row_stride(input, "input");
  const int64_t rows = d == 0 ? 0 : out.numel() / d;
  if (rows == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(input.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_FLOAT_TYPES(input.scalar_type(), "silu_and_mul", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    // The up half starts d elements after the gate half: it must be aligned too.
    const bool vec = ferrum::rows_vectorizable(input.data_ptr(), in_stride, d, kVec, sizeof(scalar_t)) &&
                     ferrum::is_aligned16(out.data_ptr());
    auto* o = reinterpret_cast<scalar_t*>(out.data_ptr());
    const auto* x = reinterpret_cast<const scalar_t*>(input.data_ptr());
    const int vec_elems = vec ? kVec : 1;
    const int64_t items = d / vec_elems;
    const int threads = ferrum::threads_for(items, 256);
    // Rows on grid.x (up to 2^31 - 1); long rows also spread over grid.y.
    const dim3 grid(static_cast<unsigned>(rows),
                    static_cast<unsigned>(std::min<int64_t>((items + threads - 1) / threads, 64)));
    if (vec) {
      ferrum::silu_and_mul_kernel<scalar_t, kVec><<<grid, threads, 0, stream>>>(o, x, in_stride, d);
    } else {
      ferrum::silu_and_mul_kernel<scalar_t, 1><<<grid, threads, 0, stream>>>(o, x, in_stride, d);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
