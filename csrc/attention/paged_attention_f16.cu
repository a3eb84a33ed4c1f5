// fp16 instantiations of the paged-attention kernels (decode, varlen, tiled-Q4, merge).
#include "attention/paged_attention_inst.cuh"

FERRUM_ATTN_INSTANTIATE(__half)
