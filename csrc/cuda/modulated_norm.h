// Launchers of the CUDA modulated RMSNorm / LayerNorm kernels (layer: s - mean(s) is normalised; the mean is
// recomputed from x_sum in backward, not saved). Plain C++ types only, so the .cu file compiles with
// nvcc alone (no torch headers); ATen glue lives in modulated_norm_glue.cpp.
//
// Shapes (row-major, contiguous): rows R = B * N, row length D.
//   x, y, x_sum, residual, dy, dx, dres  : (R, D)           element type T
//   weight                               : (D,)             T, may be null
//   shift, scale, gate                   : (R / group, D)   T, gate may be null; row r uses r / group
//   rstd                                 : (R,)             float
// Backward partial sums (float, zeroed by the kernel):
//   dw_part                              : (B * C, D)  one row per program (b, c)
//   dmod_part (shift, scale, gate)       : (B * C, D)  when group > 1 (per-sample modulation)
// When group == 1 the modulation gradients are written per row into dshift/dscale/dgate (type T).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace pairfree {
namespace cuda {

template <typename T>
cudaError_t modulated_norm_fwd(const T* x, const T* residual, const T* gate, const T* weight,
                                   const T* shift, const T* scale, T* y, T* x_sum, float* rstd,
                                   int64_t rows, int64_t dim, int64_t group, float eps, bool layer,
                               cudaStream_t stream);

template <typename T>
cudaError_t modulated_norm_bwd(const T* dy, const T* dx_sum, const T* x_normed, const T* h,
                                   const T* weight, const T* scale, const T* gate, const float* rstd,
                                   T* dx, T* dres, float* dw_part, void* dshift, void* dscale, void* dgate,
                                   int64_t batch, int64_t tokens, int64_t chunks, int64_t dim, int64_t group,
                                   bool layer, cudaStream_t stream);

}  // namespace cuda
}  // namespace pairfree
