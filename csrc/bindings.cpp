// Python bindings of pairfree._C. The torch.ops.pairfree.* operators (with autograd and fake kernels) are
// registered in Python (pairfree/kernels/); they call these functions for the "cpp" and "cuda" backends.
#include "dmd_flow.h"
#include "modulated_norm.h"

#include <ATen/Parallel.h>

namespace pairfree {
namespace {

Tensors3 mrn_fwd(const at::Tensor& x, const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& gate,
                 const c10::optional<at::Tensor>& weight, const at::Tensor& shift, const at::Tensor& scale,
                 int64_t group, double eps, bool layer) {
  if (x.is_cuda()) {
#ifdef PAIRFREE_WITH_CUDA
    return modulated_norm_fwd_cuda(x, residual, gate, weight, shift, scale, group, eps, layer);
#else
    TORCH_CHECK(false, "pairfree._C was built without CUDA kernels (rebuild with nvcc present, or use the triton backend)");
#endif
  }
  return modulated_norm_fwd_cpu(x, residual, gate, weight, shift, scale, group, eps, layer);
}

Tensors6 mrn_bwd(const at::Tensor& dy, const c10::optional<at::Tensor>& dx_sum, const at::Tensor& x_normed,
                 const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                 const c10::optional<at::Tensor>& gate, const at::Tensor& rstd, int64_t batch, int64_t group,
                bool layer) {
  if (dy.is_cuda()) {
#ifdef PAIRFREE_WITH_CUDA
    return modulated_norm_bwd_cuda(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, batch, group, layer);
#else
    TORCH_CHECK(false, "pairfree._C was built without CUDA kernels (rebuild with nvcc present, or use the triton backend)");
#endif
  }
  return modulated_norm_bwd_cpu(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, batch, group, layer);
}

bool with_cuda() {
#ifdef PAIRFREE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace pairfree

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pairfree compiled kernels (C++ CPU; CUDA when built with it)";
  m.def("with_cuda", &pairfree::with_cuda, "True when the CUDA kernels were compiled in");
  m.def("parallel_info", [] { return at::get_parallel_info(); }, "ATen threading backend description");
  m.def("modulated_norm_fwd", &pairfree::mrn_fwd, "modulated RMSNorm/LayerNorm forward -> (y, x_sum, rstd)");
  m.def("modulated_norm_bwd", &pairfree::mrn_bwd,
        "modulated RMSNorm/LayerNorm backward -> (dx, dresidual, dweight, dshift, dscale, dgate)");
  m.def("dmd_loss_fwd", &pairfree::dmd_loss_fwd_cpu, "DMD loss forward (CPU) -> (loss (B,), norm (B,))");
  m.def("dmd_loss_bwd", &pairfree::dmd_loss_bwd_cpu, "DMD loss backward (CPU) -> dx");
  m.def("flow_step_fwd", &pairfree::flow_step_fwd_cpu, "flow step forward (CPU) -> (x0, x_next)");
  m.def("flow_step_bwd", &pairfree::flow_step_bwd_cpu, "flow step backward (CPU) -> (dx_t, dv, deps)");
}
