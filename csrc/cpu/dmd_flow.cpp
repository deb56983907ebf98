// C++ CPU kernels of the fused DMD loss and the sampler's flow step (math in csrc/dmd_flow.h).
// Samples (DMD) or row chunks (flow step) are split over threads with at::parallel_for; math in fp32.
#include "../dmd_flow.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

namespace pairfree {
namespace {

inline float nan_to_num(float g) {
  if (std::isnan(g)) return 0.f;
  if (std::isinf(g)) return g > 0 ? std::numeric_limits<float>::max() : std::numeric_limits<float>::lowest();
  return g;
}

void check_2d(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.sizes() == like.sizes(), name, ": expected shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, ": expected dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
}

// One sample of the DMD forward: returns (loss, norm). Kept out of the AT_DISPATCH macro so the pragma applies.
template <typename T>
std::pair<float, float> dmd_sample(const T* x, const T* r, const T* f, int64_t n) {
  double abs_sum = 0.0;
#pragma omp simd reduction(+ : abs_sum)
  for (int64_t j = 0; j < n; ++j) abs_sum += std::fabs(float(x[j]) - float(r[j]));
  const float nm = static_cast<float>(abs_sum / n);
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const float g = nan_to_num((float(f[j]) - float(r[j])) / nm);
    sq += double(g) * g;
  }
  return {static_cast<float>(0.5 * sq / n), nm};
}

template <typename T>
void dmd_bwd_row(const T* r, const T* f, float nm, float c, T* dx, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dx[j] = static_cast<T>(nan_to_num((float(f[j]) - float(r[j])) / nm) * c);
}

// One row of the flow step (contiguous, vectorisable).
template <typename T>
void flow_fwd_row(const T* x, const T* v, const T* e, float t, float tn, T* x0, T* xn, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float a = float(x[j]) - t * float(v[j]);
    x0[j] = static_cast<T>(a);
    xn[j] = static_cast<T>((1.f - tn) * a + tn * float(e[j]));
  }
}

template <typename T>
void flow_bwd_row(const T* d0, const T* dn, float t, float tn, T* dxt, T* dv, T* de, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float g = float(d0[j]) + (1.f - tn) * float(dn[j]);  // d/dx0 of both outputs
    dxt[j] = static_cast<T>(g);
    dv[j] = static_cast<T>(-t * g);
  }
  if (de) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) de[j] = static_cast<T>(tn * float(dn[j]));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dmd_loss_fwd_cpu(const at::Tensor& x, const at::Tensor& real, const at::Tensor& fake) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "dmd_loss: x must be a contiguous (B, n) tensor");
  check_2d(real, x, "real");
  check_2d(fake, x, "fake");
  const int64_t b = x.size(0), n = x.size(1);
  auto loss = at::empty({b}, x.options().dtype(at::kFloat));
  auto norm = at::empty({b}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dmd_loss_fwd_cpu", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pr = real.data_ptr<scalar_t>(), *pf = fake.data_ptr<scalar_t>();
    float *pl = loss.data_ptr<float>(), *pn = norm.data_ptr<float>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t o = i * n;
        std::tie(pl[i], pn[i]) = dmd_sample(px + o, pr + o, pf + o, n);
      }
    });
  });
  return {loss, norm};
}

at::Tensor dmd_loss_bwd_cpu(const at::Tensor& dloss, const at::Tensor& real, const at::Tensor& fake,
                            const at::Tensor& norm, at::ScalarType dtype) {
  const int64_t b = real.size(0), n = real.size(1);
  auto dl = dloss.to(at::kFloat).contiguous();
  auto dx = at::empty_like(real, real.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "dmd_loss_bwd_cpu", [&] {
    const scalar_t *pr = real.data_ptr<scalar_t>(), *pf = fake.data_ptr<scalar_t>();
    const float *pn = norm.data_ptr<float>(), *pd = dl.data_ptr<float>();
    scalar_t* pdx = dx.data_ptr<scalar_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t o = i * n;
        dmd_bwd_row(pr + o, pf + o, pn[i], pd[i] / float(n), pdx + o, n);
      }
    });
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> flow_step_fwd_cpu(const at::Tensor& x_t, const at::Tensor& v, const at::Tensor& eps,
                                                     const at::Tensor& t, const at::Tensor& t_next) {
  TORCH_CHECK(x_t.dim() == 2 && x_t.is_contiguous(), "flow_step: x_t must be a contiguous (B, n) tensor");
  check_2d(v, x_t, "v");
  check_2d(eps, x_t, "eps");
  const int64_t b = x_t.size(0), n = x_t.size(1);
  auto tt = t.to(at::kFloat).contiguous(), tn = t_next.to(at::kFloat).contiguous();
  auto x0 = at::empty_like(x_t), xn = at::empty_like(x_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_t.scalar_type(), "flow_step_fwd_cpu", [&] {
    const scalar_t *px = x_t.data_ptr<scalar_t>(), *pv = v.data_ptr<scalar_t>(), *pe = eps.data_ptr<scalar_t>();
    const float *pt = tt.data_ptr<float>(), *ptn = tn.data_ptr<float>();
    scalar_t *p0 = x0.data_ptr<scalar_t>(), *pxn = xn.data_ptr<scalar_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) flow_fwd_row(px + i * n, pv + i * n, pe + i * n, pt[i], ptn[i],
                                                        p0 + i * n, pxn + i * n, n);
    });
  });
  return {x0, xn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_step_bwd_cpu(const at::Tensor& dx0, const at::Tensor& dx_next,
                                                                 const at::Tensor& t, const at::Tensor& t_next,
                                                                 bool need_deps) {
  check_2d(dx_next, dx0, "dx_next");
  const int64_t b = dx0.size(0), n = dx0.size(1);
  auto tt = t.to(at::kFloat).contiguous(), tn = t_next.to(at::kFloat).contiguous();
  auto dxt = at::empty_like(dx0), dv = at::empty_like(dx0);
  at::Tensor de = need_deps ? at::empty_like(dx0) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx0.scalar_type(), "flow_step_bwd_cpu", [&] {
    const scalar_t *p0 = dx0.data_ptr<scalar_t>(), *pn = dx_next.data_ptr<scalar_t>();
    const float *pt = tt.data_ptr<float>(), *ptn = tn.data_ptr<float>();
    scalar_t *pxt = dxt.data_ptr<scalar_t>(), *pv = dv.data_ptr<scalar_t>();
    scalar_t* pe = need_deps ? de.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        flow_bwd_row(p0 + i * n, pn + i * n, pt[i], ptn[i], pxt + i * n, pv + i * n, pe ? pe + i * n : nullptr, n);
    });
  });
  return {dxt, dv, de};
}

}  // namespace pairfree
