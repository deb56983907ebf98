// ATen entry points of the fused DMD-loss and flow-step ops (CPU). Tensors are 2-D (B, n), contiguous;
// per-sample scalars are (B,) fp32.
#pragma once
#include <torch/extension.h>

#include <tuple>

namespace pairfree {

// DMD: norm_b = mean|x - real|, g = nan_to_num((fake - real) / norm_b), loss_b = 0.5 * mean(g^2).
// Returns (loss (B,), norm (B,)).
std::tuple<at::Tensor, at::Tensor> dmd_loss_fwd_cpu(const at::Tensor& x, const at::Tensor& real, const at::Tensor& fake);
// dx = g * dloss_b / n.
at::Tensor dmd_loss_bwd_cpu(const at::Tensor& dloss, const at::Tensor& real, const at::Tensor& fake,
                            const at::Tensor& norm, at::ScalarType dtype);

// Flow step: x0 = x_t - t * v; x_next = (1 - t_next) * x0 + t_next * eps. Returns (x0, x_next).
std::tuple<at::Tensor, at::Tensor> flow_step_fwd_cpu(const at::Tensor& x_t, const at::Tensor& v, const at::Tensor& eps,
                                                     const at::Tensor& t, const at::Tensor& t_next);
// Returns (dx_t, dv, deps) from (dx0, dx_next); deps is undefined unless need_deps.
std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_step_bwd_cpu(const at::Tensor& dx0, const at::Tensor& dx_next,
                                                                 const at::Tensor& t, const at::Tensor& t_next,
                                                                 bool need_deps);

}  // namespace pairfree
