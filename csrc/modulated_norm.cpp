// Shared argument checks of modulated RMSNorm.
#include "modulated_norm.h"

namespace pairfree {

namespace {
void check_same(const at::Tensor& x, const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "modulated_norm: ", name, " has dtype ", t.scalar_type(),
              ", expected ", x.scalar_type(), " (same as x)");
  TORCH_CHECK(t.device() == x.device(), "modulated_norm: ", name, " is on ", t.device(), ", x on ", x.device());
  TORCH_CHECK(t.sizes() == shape, "modulated_norm: ", name, " has shape ", t.sizes(), ", expected ", shape);
  TORCH_CHECK(t.is_contiguous(), "modulated_norm: ", name, " must be contiguous");
}
}  // namespace

void check_modulated_norm_args(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                   const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                   const at::Tensor& shift, const at::Tensor& scale, int64_t group) {
  TORCH_CHECK(x.dim() == 2, "modulated_norm: x must be 2-D (rows, dim), got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "modulated_norm: x must be contiguous");
  const int64_t rows = x.size(0), dim = x.size(1);
  TORCH_CHECK(group >= 1 && rows % group == 0, "modulated_norm: group=", group, " does not divide rows=", rows);
  const std::vector<int64_t> mod_shape{rows / group, dim};
  check_same(x, shift, "shift", mod_shape);
  check_same(x, scale, "scale", mod_shape);
  if (gate) check_same(x, *gate, "gate", mod_shape);
  if (residual) check_same(x, *residual, "residual", x.sizes());
  if (weight) check_same(x, *weight, "weight", {dim});
  TORCH_CHECK(!gate || residual, "modulated_norm: gate is only used with a residual");
}

}  // namespace pairfree
