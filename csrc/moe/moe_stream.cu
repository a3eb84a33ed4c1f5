// Launchers of the "stream" path (stream.cuh): gate_up then down+combine, one CTA per SM each,
// the second launched with programmatic dependent launch (sm_90+) so that it is resident, has its
// slot table and its first weight rows in L2 by the time gate_up finishes.
#include <cuda_runtime.h>

#include "moe/moe_stream_launch.h"
#include "moe/pdl_launch.h"
#include "moe/stream.cuh"

namespace ferrum::moe {

namespace {

template <typename T>
void run(const StreamArgs& args, int num_sms, cudaStream_t stream) {
  // One CTA per SM for each kernel: a gate_up CTA and a down CTA (256 threads, <= 128 registers
  // each) fit on an SM together, so the down grid can become resident while gate_up streams.
  const dim3 grid(static_cast<unsigned>(num_sms)), block(kStreamWarps * 32);
  launch_pdl(moe_stream_gate_up_kernel<T>, grid, block, 0, stream, args);
  launch_pdl(moe_stream_down_kernel<T>, grid, block, 0, stream, args);
}

}  // namespace

void launch_stream(const StreamArgs& args, bool dtype_bf16, int num_sms, cudaStream_t stream) {
  if (dtype_bf16) {
    run<__nv_bfloat16>(args, num_sms, stream);
  } else {
    run<__half>(args, num_sms, stream);
  }
}

}  // namespace ferrum::moe
