// bf16 instantiations of the chunked-prefill kernel (head_dim 64, 96, 128, 256).
#include "attention/paged_prefill_inst.cuh"

FERRUM_PREFILL_INSTANTIATE(__nv_bfloat16)
