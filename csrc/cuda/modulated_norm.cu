// CUDA kernels for adaLN-modulated RMSNorm and LayerNorm (see modulated_norm.h for shapes).
//
//   forward:  s = residual + gate * x        (only with a residual; otherwise s = x)
//             c = s (rms) or s - mean(s) (layer)
//             y = c * rstd * w * (1 + scale) + shift,   rstd = 1 / sqrt(mean(c^2) + eps)
//   backward: g = dy * (1 + scale) * w,  xhat = c * rstd   (the layer mean recomputed from s)
//             ds = rstd * (g - [layer] mean(g) - xhat * mean(g * xhat)) + dx_sum
//             dx = gate * ds, dres = ds, dgate = sum(x * ds), dshift = sum(dy), dscale = sum(dy * xhat * w),
//             dw = sum(dy * (1 + scale) * xhat)
// Plain kernels: no torch headers. All arithmetic in fp32.
#include "modulated_norm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pairfree {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Sum of one float per thread over the block; every thread gets the result.
__device__ float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? smem[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row. The row is read twice (sum of squares, then the output) and stays in L1/L2.
template <typename T>
__global__ void fwd_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ gate,
                           const T* __restrict__ weight, const T* __restrict__ shift, const T* __restrict__ scale,
                           T* __restrict__ y, T* __restrict__ x_sum, float* __restrict__ rstd, int64_t dim,
                           int64_t group, float eps, bool layer) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x, m = row / group;
  const T* xr = x + row * dim;
  float acc = 0.f;  // sum of s (layer) or of s^2 (rms)
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float s = to_f(xr[j]);
    if (residual) {
      if (gate) s *= to_f(gate[m * dim + j]);
      s += to_f(residual[row * dim + j]);
      const T stored = from_f<T>(s);
      x_sum[row * dim + j] = stored;
      s = to_f(stored);  // normalise what backward will see
    }
    acc += layer ? s : s * s;
  }
  const T* sr = residual ? x_sum + row * dim : xr;  // this thread wrote exactly these entries of x_sum
  float mean = 0.f, var = block_sum(acc, smem) / dim;
  if (layer) {  // two-pass variance: sum((s - mean)^2)
    mean = var;
    float sq = 0.f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float c = to_f(sr[j]) - mean;
      sq += c * c;
    }
    var = block_sum(sq, smem) / dim;
  }
  const float r = rsqrtf(var + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float n = (to_f(sr[j]) - mean) * r;
    if (weight) n *= to_f(weight[j]);
    y[row * dim + j] = from_f<T>(n * (1.f + to_f(scale[m * dim + j])) + to_f(shift[m * dim + j]));
  }
}

// Program (b, c) handles rows [b*tokens + c*chunk, ...) of sample b. Per-column partial sums are kept in
// dynamic shared memory (each column owned by one thread, so no races) and written once at the end.
template <typename T>
__global__ void bwd_kernel(const T* __restrict__ dy, const T* __restrict__ dx_sum, const T* __restrict__ xn,
                           const T* __restrict__ h, const T* __restrict__ weight, const T* __restrict__ scale,
                           const T* __restrict__ gate, const float* __restrict__ rstd, T* __restrict__ dx,
                           T* __restrict__ dres, float* __restrict__ dw_part, void* dshift, void* dscale,
                           void* dgate, int64_t tokens, int64_t chunk, int64_t dim, int64_t group, bool layer) {
  extern __shared__ float acc[];  // [dw | dshift | dscale | dgate] x dim
  __shared__ float smem[32];
  const int64_t b = blockIdx.x, c = blockIdx.y, pid = b * gridDim.y + c;
  const bool per_sample = group > 1;
  float *a_dw = acc, *a_sh = acc + dim, *a_sc = acc + 2 * dim, *a_g = acc + 3 * dim;
  for (int64_t j = threadIdx.x; j < 4 * dim; j += blockDim.x) acc[j] = 0.f;

  const int64_t start = b * tokens + c * chunk;
  const int64_t end = min(start + chunk, (b + 1) * tokens);
  for (int64_t row = start; row < end; ++row) {
    const int64_t m = row / group, o = row * dim;
    const float r = rstd[row];
    float mean = 0.f;
    if (layer) {
      for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) mean += to_f(xn[o + j]);
      mean = block_sum(mean, smem) / dim;
    }
    float dot = 0.f, gsum = 0.f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float w = weight ? to_f(weight[j]) : 1.f;
      const float xhat = (to_f(xn[o + j]) - mean) * r;
      const float gw = to_f(dy[o + j]) * (1.f + to_f(scale[m * dim + j])) * w;
      dot += gw * xhat;
      gsum += gw;
    }
    dot = block_sum(dot, smem) / dim;
    const float gmean = layer ? block_sum(gsum, smem) / dim : 0.f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
      const float w = weight ? to_f(weight[j]) : 1.f;
      const float xhat = (to_f(xn[o + j]) - mean) * r, d = to_f(dy[o + j]);
      const float g = d * (1.f + to_f(scale[m * dim + j]));
      float ds = r * (g * w - gmean - xhat * dot);
      if (dx_sum) ds += to_f(dx_sum[o + j]);
      a_dw[j] += g * xhat;
      float dg = 0.f;
      if (h) {  // residual mode: s = residual + gate * h
        dres[o + j] = from_f<T>(ds);
        dx[o + j] = from_f<T>(gate ? to_f(gate[m * dim + j]) * ds : ds);
        dg = to_f(h[o + j]) * ds;
      } else {
        dx[o + j] = from_f<T>(ds);
      }
      if (per_sample) {
        a_sh[j] += d;
        a_sc[j] += d * xhat * w;
        a_g[j] += dg;
      } else {
        static_cast<T*>(dshift)[o + j] = from_f<T>(d);
        static_cast<T*>(dscale)[o + j] = from_f<T>(d * xhat * w);
        if (dgate) static_cast<T*>(dgate)[o + j] = from_f<T>(dg);
      }
    }
  }
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    dw_part[pid * dim + j] = a_dw[j];
    if (per_sample) {
      static_cast<float*>(dshift)[pid * dim + j] = a_sh[j];
      static_cast<float*>(dscale)[pid * dim + j] = a_sc[j];
      if (dgate) static_cast<float*>(dgate)[pid * dim + j] = a_g[j];
    }
  }
}

int threads_for(int64_t dim) {
  int t = 32;
  while (t < kThreads && t < dim) t <<= 1;
  return t;
}

}  // namespace

template <typename T>
cudaError_t modulated_norm_fwd(const T* x, const T* residual, const T* gate, const T* weight,
                                   const T* shift, const T* scale, T* y, T* x_sum, float* rstd,
                                   int64_t rows, int64_t dim, int64_t group, float eps, bool layer,
                                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  fwd_kernel<T><<<rows, threads_for(dim), 0, stream>>>(x, residual, gate, weight, shift, scale, y, x_sum, rstd,
                                                       dim, group, eps, layer);
  return cudaGetLastError();
}

template <typename T>
cudaError_t modulated_norm_bwd(const T* dy, const T* dx_sum, const T* x_normed, const T* h,
                                   const T* weight, const T* scale, const T* gate, const float* rstd,
                                   T* dx, T* dres, float* dw_part, void* dshift, void* dscale, void* dgate,
                                   int64_t batch, int64_t tokens, int64_t chunks, int64_t dim, int64_t group,
                                   bool layer, cudaStream_t stream) {
  if (batch * tokens == 0) return cudaSuccess;
  const size_t smem = 4 * dim * sizeof(float);
  auto kernel = bwd_kernel<T>;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
  }
  const int64_t chunk = (tokens + chunks - 1) / chunks;
  dim3 grid((unsigned)batch, (unsigned)chunks);
  kernel<<<grid, threads_for(dim), smem, stream>>>(dy, dx_sum, x_normed, h, weight, scale, gate, rstd, dx, dres,
                                                  dw_part, dshift, dscale, dgate, tokens, chunk, dim, group, layer);
  return cudaGetLastError();
}

#define PAIRFREE_INSTANTIATE(T)                                                                              \
  template cudaError_t modulated_norm_fwd<T>(const T*, const T*, const T*, const T*, const T*, const T*, \
                                                 T*, T*, float*, int64_t, int64_t, int64_t, float, bool,     \
                                                 cudaStream_t);                                              \
  template cudaError_t modulated_norm_bwd<T>(const T*, const T*, const T*, const T*, const T*, const T*, \
                                                 const T*, const float*, T*, T*, float*, void*, void*,       \
                                                 void*, int64_t, int64_t, int64_t, int64_t, int64_t, bool,   \
                                                 cudaStream_t);
PAIRFREE_INSTANTIATE(float)
PAIRFREE_INSTANTIATE(__half)
PAIRFREE_INSTANTIATE(__nv_bfloat16)

}  // namespace cuda
}  // namespace pairfree
