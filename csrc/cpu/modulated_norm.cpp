// C++ CPU kernels of modulated RMSNorm / LayerNorm (math in csrc/cuda/modulated_norm.cu's header comment).
// Rows are split over threads with at::parallel_for; all arithmetic in fp32.
#include "../modulated_norm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace pairfree {
namespace {

// Converts n values to fp32 (a missing tensor reads as `fill`). Inner loops below are branch-free so the
// compiler vectorises them; reductions use `omp simd` so they vectorise without -ffast-math.
template <typename T>
inline void load_f32(const T* src, float* dst, int64_t n, float fill = 0.f) {
  if (!src) {
    std::fill(dst, dst + n, fill);
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

template <typename T>
inline void store(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

template <typename T>
void fwd_rows(const T* x, const T* residual, const T* gate, const T* weight, const T* shift, const T* scale, T* y,
              T* x_sum, float* rstd, int64_t rows, int64_t dim, int64_t group, float eps, bool layer) {
  std::vector<float> w(dim);
  load_f32(weight, w.data(), dim, 1.f);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> s(dim), t(dim), sc(dim), sh(dim);
    int64_t loaded = -1;  // modulation row currently in sc/sh/t(gate)
    for (int64_t row = begin; row < end; ++row) {
      const int64_t m = row / group, o = row * dim, mo = m * dim;
      if (m != loaded) {
        load_f32(scale + mo, sc.data(), dim);
        load_f32(shift + mo, sh.data(), dim);
        loaded = m;
      }
      load_f32(x + o, s.data(), dim);
      if (residual) {
        if (gate) {
          load_f32(gate + mo, t.data(), dim);
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) s[j] *= t[j];
        }
        load_f32(residual + o, t.data(), dim);
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) s[j] += t[j];
        store(s.data(), x_sum + o, dim);
        load_f32(x_sum + o, s.data(), dim);  // normalise what backward will see (rounded to T)
      }
      if (layer) {  // centre s; two-pass variance below
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < dim; ++j) sum += s[j];
        const float mean = sum / dim;
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) s[j] -= mean;
      }
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < dim; ++j) ss += s[j] * s[j];
      const float r = 1.f / std::sqrt(ss / dim + eps);
      rstd[row] = r;
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) t[j] = s[j] * r * w[j] * (1.f + sc[j]) + sh[j];
      store(t.data(), y + o, dim);
    }
  });
}

// Program p = b * chunks + c owns rows [b*tokens + c*chunk, ...) and one row of each partial-sum buffer, so
// results do not depend on thread scheduling.
template <typename T>
void bwd_rows(const T* dy, const T* dx_sum, const T* xn, const T* h, const T* weight, const T* scale, const T* gate,
              const float* rstd, T* dx, T* dres, float* dw_part, float* dsh_part, float* dsc_part, float* dg_part,
              T* dshift, T* dscale, T* dgate, int64_t batch, int64_t tokens, int64_t chunks, int64_t dim,
              int64_t group, bool layer) {
  const int64_t chunk = (tokens + chunks - 1) / chunks;
  const bool per_sample = group > 1;
  std::vector<float> w(dim);
  load_f32(weight, w.data(), dim, 1.f);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t pbegin, int64_t pend) {
    std::vector<float> d(dim), xhat(dim), sc(dim), gt(dim), ds(dim), t(dim);
    for (int64_t p = pbegin; p < pend; ++p) {
      const int64_t b = p / chunks, c = p % chunks;
      const int64_t start = b * tokens + c * chunk, end = std::min(start + chunk, (b + 1) * tokens);
      float* a_dw = dw_part + p * dim;
      int64_t loaded = -1;
      for (int64_t row = start; row < end; ++row) {
        const int64_t m = row / group, o = row * dim, mo = m * dim;
        const float r = rstd[row];
        if (m != loaded) {
          load_f32(scale + mo, sc.data(), dim);
          load_f32(gate ? gate + mo : nullptr, gt.data(), dim, 1.f);
          loaded = m;
        }
        load_f32(dy + o, d.data(), dim);
        load_f32(xn + o, xhat.data(), dim);
        float mean = 0.f;
        if (layer) {  // the mean is recomputed from s, not saved
#pragma omp simd reduction(+ : mean)
          for (int64_t j = 0; j < dim; ++j) mean += xhat[j];
          mean /= dim;
        }
        float dot = 0.f, gsum = 0.f;
#pragma omp simd reduction(+ : dot, gsum)
        for (int64_t j = 0; j < dim; ++j) {
          xhat[j] = (xhat[j] - mean) * r;
          const float g = d[j] * (1.f + sc[j]);
          a_dw[j] += g * xhat[j];
          dot += g * w[j] * xhat[j];
          gsum += g * w[j];
        }
        dot /= dim;
        const float gmean = layer ? gsum / dim : 0.f;
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) ds[j] = r * (d[j] * (1.f + sc[j]) * w[j] - gmean - xhat[j] * dot);
        if (dx_sum) {
          load_f32(dx_sum + o, t.data(), dim);
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) ds[j] += t[j];
        }
        if (h) {  // residual mode: s = residual + gate * h
          store(ds.data(), dres + o, dim);
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) t[j] = gt[j] * ds[j];
          store(t.data(), dx + o, dim);
          load_f32(h + o, t.data(), dim);
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) t[j] *= ds[j];  // dgate contribution
        } else {
          store(ds.data(), dx + o, dim);
        }
        if (per_sample) {
          float* a_sh = dsh_part + p * dim;
          float* a_sc = dsc_part + p * dim;
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) {
            a_sh[j] += d[j];
            a_sc[j] += d[j] * xhat[j] * w[j];
          }
          if (dg_part) {
            float* a_g = dg_part + p * dim;
#pragma omp simd
            for (int64_t j = 0; j < dim; ++j) a_g[j] += t[j];
          }
        } else {
          if (dgate) store(t.data(), dgate + o, dim);
          store(d.data(), dshift + o, dim);
#pragma omp simd
          for (int64_t j = 0; j < dim; ++j) t[j] = d[j] * xhat[j] * w[j];
          store(t.data(), dscale + o, dim);
        }
      }
    }
  });
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

}  // namespace

Tensors3 modulated_norm_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const c10::optional<at::Tensor>& gate, const c10::optional<at::Tensor>& weight,
                                    const at::Tensor& shift, const at::Tensor& scale, int64_t group, double eps,
                                bool layer) {
  check_modulated_norm_args(x, residual, gate, weight, shift, scale, group);
  const int64_t rows = x.size(0), dim = x.size(1);
  auto y = at::empty_like(x);
  auto x_sum = residual ? at::empty_like(x) : at::empty({0}, x.options());
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "modulated_norm_fwd_cpu", [&] {
    fwd_rows<scalar_t>(x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(residual), ptr_or_null<scalar_t>(gate),
                       ptr_or_null<scalar_t>(weight), shift.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                       y.data_ptr<scalar_t>(), residual ? x_sum.data_ptr<scalar_t>() : nullptr,
                       rstd.data_ptr<float>(), rows, dim, group, static_cast<float>(eps), layer);
  });
  return {y, x_sum, rstd};
}

Tensors6 modulated_norm_bwd_cpu(const at::Tensor& dy, const c10::optional<at::Tensor>& dx_sum,
                                    const at::Tensor& x_normed, const c10::optional<at::Tensor>& h,
                                    const c10::optional<at::Tensor>& weight, const at::Tensor& scale,
                                    const c10::optional<at::Tensor>& gate, const at::Tensor& rstd, int64_t batch,
                                int64_t group, bool layer) {
  check_modulated_norm_args(x_normed, h, gate, weight, scale, scale, group);
  TORCH_CHECK(dy.sizes() == x_normed.sizes() && dy.is_contiguous() && dy.scalar_type() == x_normed.scalar_type(),
              "modulated_norm backward: dy must be a contiguous ", x_normed.scalar_type(), " tensor of shape ",
              x_normed.sizes());
  const int64_t rows = x_normed.size(0), dim = x_normed.size(1);
  TORCH_CHECK(batch >= 1 && rows % batch == 0, "modulated_norm backward: batch=", batch, " does not divide rows=", rows);
  const int64_t tokens = rows / batch;
  const bool per_sample = group > 1;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(tokens, (2 * at::get_num_threads() + batch - 1) / batch));
  const int64_t programs = batch * chunks;
  auto f32 = x_normed.options().dtype(at::kFloat);
  auto empty = [&] { return at::empty({0}, x_normed.options()); };  // distinct tensors: outputs must not alias
  auto dx = at::empty_like(x_normed);
  auto dres = h ? at::empty_like(x_normed) : empty();
  auto dw_part = at::zeros({programs, dim}, f32);
  at::Tensor dsh_part, dsc_part, dg_part, dshift, dscale, dgate;
  if (per_sample) {
    dsh_part = at::zeros({programs, dim}, f32);
    dsc_part = at::zeros({programs, dim}, f32);
    if (gate) dg_part = at::zeros({programs, dim}, f32);
  } else {
    dshift = at::empty_like(scale);
    dscale = at::empty_like(scale);
    if (gate) dgate = at::empty_like(scale);
  }
  auto fptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dy.scalar_type(), "modulated_norm_bwd_cpu", [&] {
    auto tptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    bwd_rows<scalar_t>(dy.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(dx_sum), x_normed.data_ptr<scalar_t>(),
                       ptr_or_null<scalar_t>(h), ptr_or_null<scalar_t>(weight), scale.data_ptr<scalar_t>(),
                       ptr_or_null<scalar_t>(gate), rstd.data_ptr<float>(), dx.data_ptr<scalar_t>(),
                       h ? dres.data_ptr<scalar_t>() : nullptr, dw_part.data_ptr<float>(), fptr(dsh_part),
                       fptr(dsc_part), fptr(dg_part), tptr(dshift), tptr(dscale), tptr(dgate), batch, tokens,
                       chunks, dim, group, layer);
  });
  auto dtype = x_normed.scalar_type();
  auto dw = weight ? dw_part.sum(0).to(dtype) : empty();
  if (per_sample) {
    dshift = dsh_part.view({batch, chunks, dim}).sum(1).to(dtype);
    dscale = dsc_part.view({batch, chunks, dim}).sum(1).to(dtype);
    dgate = gate ? dg_part.view({batch, chunks, dim}).sum(1).to(dtype) : empty();
  } else if (!gate) {
    dgate = empty();
  }
  return {dx, dres, dw, dshift, dscale, dgate};
}

}  // namespace pairfree
