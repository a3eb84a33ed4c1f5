// Launcher for greedy_argmax: checks, picks the split of each row over CTAs from host
// values only (B, V, the SM count), and launches the row kernel plus, when rows are
// split, the merge kernel. The partial-key scratch comes from the caching allocator, so
// the op needs no host sync and can be captured in a CUDA graph.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>

#include "common/checks.h"
#include "common/device_info.h"
#include "common/dispatch.h"
#include "common/pdl_launch.h"
#include "sampling/greedy_argmax.cuh"
#include "ops.h"

namespace {

// Resident CTAs per SM of the current device (at least 1), cached per device; a failed query raises.
template <typename T, bool kMasked>
int blocks_per_sm() {
  return ferrum::resident_blocks<ferrum::argmax::argmax_rows_kernel<T, kMasked>, ferrum::argmax::kThreads>();
}

void check_args(const at::Tensor& ids, const std::optional<at::Tensor>& values, const at::Tensor& logits,
                const std::optional<at::Tensor>& allowed) {
  FERRUM_CHECK_CUDA(logits);
  FERRUM_CHECK_DIM(logits, 2);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0, "logits: expected a non-empty last dimension (the vocabulary), got shape ", logits.sizes());
  TORCH_CHECK(V < std::numeric_limits<int32_t>::max(), "logits: vocabulary of ", V, " entries is too large (< 2^31)");
  TORCH_CHECK(logits.stride(1) == 1 || V == 1, "logits: expected a unit stride in the last dimension, got strides ",
              logits.strides());
  TORCH_CHECK(logits.stride(0) >= 0, "logits: expected a non-negative row stride");

  FERRUM_CHECK_SAME_DEVICE(ids, logits);
  FERRUM_CHECK_DTYPE(ids, at::kLong);
  FERRUM_CHECK_CONTIGUOUS(ids);
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == B, "ids: expected shape [", B, "], got ", ids.sizes());
  if (values.has_value()) {
    const at::Tensor& out_values = *values;
    FERRUM_CHECK_SAME_DEVICE(out_values, logits);
    FERRUM_CHECK_SAME_DTYPE(out_values, logits);
    FERRUM_CHECK_CONTIGUOUS(out_values);
    TORCH_CHECK(out_values.dim() == 1 && out_values.size(0) == B, "out_values: expected shape [", B, "], got ",
                out_values.sizes());
  }
  if (allowed.has_value()) {
    const at::Tensor& mask = *allowed;
    FERRUM_CHECK_SAME_DEVICE(mask, logits);
    TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte,
                "allowed: expected dtype bool or uint8, got ", mask.scalar_type());
    TORCH_CHECK((mask.dim() == 2 && mask.size(0) == B && mask.size(1) == V) || (mask.dim() == 1 && mask.size(0) == V),
                "allowed: expected shape [", B, ", ", V, "] or [", V, "], got ", mask.sizes());
    TORCH_CHECK(mask.stride(-1) == 1 || V == 1, "allowed: expected a unit stride in the last dimension, got strides ",
                mask.strides());
    TORCH_CHECK(mask.dim() == 1 || mask.stride(0) >= 0, "allowed: expected a non-negative row stride");
  }
}

}  // namespace

void greedy_argmax(at::Tensor& ids, const std::optional<at::Tensor>& values, const at::Tensor& logits,
                   const std::optional<at::Tensor>& allowed) {
  check_args(ids, values, logits, allowed);
  const int64_t B = logits.size(0);
  const int V = static_cast<int>(logits.size(1));
  if (B == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = logits.device().index();
  namespace ga = ferrum::argmax;

  FERRUM_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "greedy_argmax", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const auto* x = reinterpret_cast<const scalar_t*>(logits.data_ptr());
    const int64_t x_stride = B > 1 ? logits.stride(0) : 0;
    const uint8_t* mask = allowed.has_value() ? reinterpret_cast<const uint8_t*>(allowed->data_ptr()) : nullptr;
    // Rows are split over CTAs in two regimes. While the batch alone leaves SMs idle, each
    // row takes its share of one full wave of CTAs (at least one 16-byte load per thread
    // per CTA). Beyond that, fp32 rows are still cut into 16 KB chunks: many short-lived
    // CTAs stream closer to the bandwidth than one CTA per 600 KB row (H100, B=256
    // V=151936: 59.4 us against 64.2, B=64: 21.2 against 22.4), the merge of ~40 keys
    // per row costing next to nothing. 16-bit rows (304 KB) measured slower so in one run
    // (40.6 us against 37.0 at B=256) and keep one CTA per row; worth re-measuring.
    const int64_t chunk_bytes = sizeof(scalar_t) == 4 ? int64_t{16} << 10 : 0;
    const int64_t min_chunk = ga::kThreads * kVec;
    int64_t num_chunks = chunk_bytes > 0 ? std::max<int64_t>(1, int64_t(V) * sizeof(scalar_t) / chunk_bytes) : 1;
    if (B < ferrum::sm_count(device)) {
      const int64_t resident = int64_t(ferrum::sm_count(device)) * (mask != nullptr ? blocks_per_sm<scalar_t, true>()
                                                                         : blocks_per_sm<scalar_t, false>());
      num_chunks = std::max(num_chunks, std::min<int64_t>(resident / B, (V + min_chunk - 1) / min_chunk));
    }
    int64_t chunk_elems = (V + num_chunks - 1) / num_chunks;
    chunk_elems = (chunk_elems + kVec - 1) / kVec * kVec;
    num_chunks = (V + chunk_elems - 1) / chunk_elems;

    const int64_t mask_stride = allowed.has_value() && allowed->dim() == 2 && B > 1 ? allowed->stride(0) : 0;
    auto* out_ids = ids.data_ptr<int64_t>();
    auto* out_values = values.has_value() ? reinterpret_cast<scalar_t*>(values->data_ptr()) : nullptr;

    at::Tensor scratch;
    uint64_t* partial = nullptr;
    if (num_chunks > 1) {
      scratch = at::empty({B * num_chunks}, logits.options().dtype(at::kLong));
      partial = reinterpret_cast<uint64_t*>(scratch.data_ptr());
    }

    const dim3 grid(static_cast<unsigned>(B * num_chunks));
    if (mask != nullptr) {
      ga::argmax_rows_kernel<scalar_t, true><<<grid, ga::kThreads, 0, stream>>>(
          x, x_stride, mask, mask_stride, V, static_cast<int>(chunk_elems), static_cast<int>(num_chunks), partial,
          out_ids, out_values);
    } else {
      ga::argmax_rows_kernel<scalar_t, false><<<grid, ga::kThreads, 0, stream>>>(
          x, x_stride, nullptr, 0, V, static_cast<int>(chunk_elems), static_cast<int>(num_chunks), partial,
          out_ids, out_values);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    if (num_chunks > 1) {
      constexpr int kMergeThreads = 256;
      // Programmatic dependent launch (sm_90+): the merge kernel is scheduled while the
      // row kernel runs and waits for it with griddepcontrol.wait.
      const uint64_t* partial_c = partial;
      const int chunks_i = static_cast<int>(num_chunks);
      ferrum::launch_pdl(ga::argmax_merge_kernel<scalar_t>,
                         dim3(static_cast<unsigned>((B * 32 + kMergeThreads - 1) / kMergeThreads)),
                         dim3(kMergeThreads), 0, stream, partial_c, chunks_i, B, x, x_stride, out_ids, out_values);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}
