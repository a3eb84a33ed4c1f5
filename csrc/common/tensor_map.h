// Host-side creation of TMA tensor maps (CUtensorMap) for the bulk tensor copies of
// common/bulk_copy.cuh. The driver entry point is looked up through the runtime, so the
// extension does not link libcuda. Torch-free; failures return false and callers keep a
// path without tensor maps.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>

namespace ferrum {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A 3-D map over 16-bit elements: dims[0] contiguous, dims[1] and dims[2] `strides` bytes apart
// (multiples of 16), boxes of box[0] x box[1] x box[2] elements with box[0] * 2 == 128 bytes,
// landing in shared memory as 128-byte rows with the 128-byte swizzle: the 16-byte chunk j of
// a row at shared address a sits at chunk j ^ ((a >> 7) & 7).
inline bool encode_tensor_map_3d_u16_sw128(CUtensorMap* map, const void* base, const uint64_t (&dims)[3],
                                           const uint64_t (&strides)[2], const uint32_t (&box)[3]) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr || box[0] * 2 != 128 || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  cuuint64_t dim[3] = {dims[0], dims[1], dims[2]};
  cuuint64_t stride[2] = {strides[0], strides[1]};
  cuuint32_t boxdim[3] = {box[0], box[1], box[2]};
  cuuint32_t elem_strides[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, const_cast<void*>(base), dim, stride, boxdim, elem_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace ferrum
