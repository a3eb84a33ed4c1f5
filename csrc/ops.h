// Launchers of every op, as registered in torch_bindings.cpp. Each checks its
// arguments, guards the device, and launches on the current stream.
#pragma once

#include <ATen/core/Tensor.h>

// ---- layers ----------------------------------------------------------------
void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm(at::Tensor& out, const at::Tensor& input, at::Tensor& residual,
                        const at::Tensor& weight, double eps);
void silu_and_mul(at::Tensor& out, const at::Tensor& input);

// ---- sampling --------------------------------------------------------------
void greedy_argmax(at::Tensor& ids, const std::optional<at::Tensor>& values, const at::Tensor& logits,
                   const std::optional<at::Tensor>& allowed);

// ---- attention -------------------------------------------------------------

// ---- moe -------------------------------------------------------------------
