// Launchers of the "stream" path (stream.cuh): gate_up then down+combine, one CTA per SM each,
// the second launched with programmatic dependent launch (sm_90+) so that it is resident, has its
// slot table and its first weight rows in L2 by the time gate_up finishes.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "moe/moe_stream_launch.h"
#include "moe/stream.cuh"

namespace ferrum::moe {

namespace {

template <typename Kernel>
void launch_pdl(Kernel kernel, int grid, bool pdl, const StreamArgs& args, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(kStreamWarps * 32);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args));
}

template <typename T>
void run(const StreamArgs& args, int num_sms, bool pdl, cudaStream_t stream) {
  // One CTA per SM for each kernel: a gate_up CTA and a down CTA (256 threads, <= 128 registers
  // each) fit on an SM together, so the down grid can become resident while gate_up streams.
  launch_pdl(moe_stream_gate_up_kernel<T>, num_sms, pdl, args, stream);
  launch_pdl(moe_stream_down_kernel<T>, num_sms, pdl, args, stream);
}

}  // namespace

void launch_stream(const StreamArgs& args, bool dtype_bf16, int num_sms, bool pdl, cudaStream_t stream) {
  if (dtype_bf16) {
    run<__nv_bfloat16>(args, num_sms, pdl, stream);
  } else {
    run<__half>(args, num_sms, pdl, stream);
  }
}

}  // namespace ferrum::moe
