// ATen glue for the CUDA modulated RMSNorm kernels: checks, allocation, stream, partial-sum reduction.
#include "../modulated_norm.h"
#include "modulated_norm.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pairfree {
namespace {

template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T>
const typename CudaType<T>::type* cptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<const typename CudaType<T>::type*>(t.data_ptr<T>()) : nullptr;
}
template <typename T>
typename CudaType<T>::type* mptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<typename CudaType<T>::type*>(t.data_ptr<T>()) : nullptr;
}
at::Tensor value_or_undefined(const c10::optional<at::Tensor>& t) { return t ? *t : at::Tensor(); }

}  // namespace

Tensors3 modulated_norm_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                     const at::Tensor& shift, const at::Tensor& scale, int64_t group, double eps, bool layer) {
  check_modulated_norm_args(x, residual, gate, weight, shift, scale, group);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), dim = x.size(1);
  auto y = at::empty_like(x);
  auto x_sum = residual ? at::empty_like(x) : at::empty({0}, x.options());
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "modulated_norm_fwd_cuda", [&] {
    auto err = cuda::modulated_norm_fwd(cptr<scalar_t>(x), cptr<scalar_t>(value_or_undefined(residual)),
                                            cptr<scalar_t>(value_or_undefined(gate)),
                                            cptr<scalar_t>(value_or_undefined(weight)), cptr<scalar_t>(shift),
                                            cptr<scalar_t>(scale), mptr<scalar_t>(y), mptr<scalar_t>(x_sum),
                                            rstd.data_ptr<float>(), rows, dim, group, static_cast<float>(eps), layer, stream);
    TORCH_CHECK(err == cudaSuccess, "modulated_norm_fwd_cuda: ", cudaGetErrorString(err));
  });
  return {y, x_sum, rstd};
}

Tensors6 modulated_norm_bwd_cuda(const at::Tensor& dy, const c10::optional<at::Tensor>& dx_sum,
                                     const at::Tensor& x_normed, const c10::optional<at::Tensor>& h,
                                     const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& gate, const at::Tensor& rstd, int64_t batch,
                                     int64_t group, bool layer) {
  check_modulated_norm_args(x_normed, h, gate, weight, scale, scale, group);
  TORCH_CHECK(dy.sizes() == x_normed.sizes() && dy.is_contiguous() && dy.scalar_type() == x_normed.scalar_type(),
              "modulated_norm backward: dy must be a contiguous ", x_normed.scalar_type(), " tensor of shape ",
              x_normed.sizes());
  c10::cuda::CUDAGuard guard(dy.device());
  const int64_t rows = x_normed.size(0), dim = x_normed.size(1);
  TORCH_CHECK(batch >= 1 && rows % batch == 0, "modulated_norm backward: batch=", batch, " does not divide rows=", rows);
  const int64_t tokens = rows / batch;
  const bool per_sample = group > 1;
  int sms = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dy.get_device()) == cudaSuccess,
              "modulated_norm_bwd_cuda: cannot query the SM count");
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tokens, (4 * static_cast<int64_t>(sms) + batch - 1) / batch));
  const int64_t programs = batch * chunks;
  auto f32 = x_normed.options().dtype(at::kFloat);
  auto empty = [&] { return at::empty({0}, x_normed.options()); };  // distinct tensors: outputs must not alias
  auto dx = at::empty_like(x_normed);
  auto dres = h ? at::empty_like(x_normed) : empty();
  auto dw_part = at::empty({programs, dim}, f32);
  at::Tensor dshift, dscale, dgate;
  if (per_sample) {
    dshift = at::empty({programs, dim}, f32);
    dscale = at::empty({programs, dim}, f32);
    dgate = gate ? at::empty({programs, dim}, f32) : at::Tensor();
  } else {
    dshift = at::empty_like(scale);
    dscale = at::empty_like(scale);
    dgate = gate ? at::empty_like(scale) : at::Tensor();
  }
  auto vptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "modulated_norm_bwd_cuda", [&] {
    auto err = cuda::modulated_norm_bwd(
        cptr<scalar_t>(dy), cptr<scalar_t>(value_or_undefined(dx_sum)), cptr<scalar_t>(x_normed),
        cptr<scalar_t>(value_or_undefined(h)), cptr<scalar_t>(value_or_undefined(weight)), cptr<scalar_t>(scale),
        cptr<scalar_t>(value_or_undefined(gate)), rstd.data_ptr<float>(), mptr<scalar_t>(dx), mptr<scalar_t>(dres),
        dw_part.data_ptr<float>(), vptr(dshift), vptr(dscale), vptr(dgate), batch, tokens, chunks, dim, group,
        layer, stream);
    TORCH_CHECK(err == cudaSuccess, "modulated_norm_bwd_cuda: ", cudaGetErrorString(err));
  });
  auto dtype = x_normed.scalar_type();
  auto dw = weight ? dw_part.sum(0).to(dtype) : empty();
  if (per_sample) {
    dshift = dshift.view({batch, chunks, dim}).sum(1).to(dtype);
    dscale = dscale.view({batch, chunks, dim}).sum(1).to(dtype);
    dgate = gate ? dgate.view({batch, chunks, dim}).sum(1).to(dtype) : empty();
  } else if (!gate) {
    dgate = empty();
  }
  return {dx, dres, dw, dshift, dscale, dgate};
}

}  // namespace pairfree
