// bf16 instantiations of the decode-v2 kernel (head_dim 64/96/128/256 x "vllm"/"nhd").
#include "attention/paged_decode_inst.cuh"

FERRUM_DECODE_V2_INSTANTIATE(__nv_bfloat16)
