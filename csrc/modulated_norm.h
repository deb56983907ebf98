// ATen entry points of modulated RMSNorm / LayerNorm (layer = true: s - mean(s) is normalised) (CPU always; CUDA when built with PAIRFREE_WITH_CUDA).
// Inputs are 2-D: x (R, D) with R = batch * tokens; modulation (R / group, D), group = tokens for
// per-sample modulation or 1 for per-token. Optional tensors are undefined when absent.
#pragma once
#include <torch/extension.h>

#include <tuple>

namespace pairfree {

using Tensors3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Returns (y, x_sum, rstd); x_sum is empty without a residual.
Tensors3 modulated_norm_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                    const at::Tensor& shift, const at::Tensor& scale, int64_t group, double eps, bool layer);
// Returns (dx, dresidual, dweight, dshift, dscale, dgate); absent inputs get empty gradients.
Tensors6 modulated_norm_bwd_cpu(const at::Tensor& dy, const c10::optional<at::Tensor>& dx_sum,
                                    const at::Tensor& x_normed, const c10::optional<at::Tensor>& h,
                                    const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                                    const c10::optional<at::Tensor>& gate, const at::Tensor& rstd, int64_t batch,
                                    int64_t group, bool layer);
#ifdef PAIRFREE_WITH_CUDA
Tensors3 modulated_norm_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                     const at::Tensor& shift, const at::Tensor& scale, int64_t group, double eps, bool layer);
Tensors6 modulated_norm_bwd_cuda(const at::Tensor& dy, const c10::optional<at::Tensor>& dx_sum,
                                     const at::Tensor& x_normed, const c10::optional<at::Tensor>& h,
                                     const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& gate, const at::Tensor& rstd, int64_t batch,
                                     int64_t group, bool layer);
#endif

// Argument checks shared by both devices (shapes, dtypes, contiguity), with messages naming the argument.
void check_modulated_norm_args(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                   const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                   const at::Tensor& shift, const at::Tensor& scale, int64_t group);

}  // namespace pairfree
