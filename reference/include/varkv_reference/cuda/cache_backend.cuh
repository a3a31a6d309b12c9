#pragma once
//! \file
//! Type-erased device KV cache for the GPU reference model: one `DeviceCompressedCache<Policy>` per
//! registry spec behind a small virtual interface, so the transformer code is compiled once and the
//! policies' kernels are instantiated in their own translation unit (reference/src/cuda/
//! device_cache_backends.cu). Internal to varkv_reference_cuda (CUDA translation units only).
//!
//! \par Overview
//! `attend_commit(step, l, q, k, v, out, lse, stream)` runs `DeviceCompressedCache::attend` (softmax
//! scale 1: VAR's q carries the learned per-head scale) and then `commit` for layer l of scale step
//! `step`; q, k, v are [S, H, n, d] bf16 device tensors, out [S, H, n, d] (any row-aligned strides),
//! lse [S, H, n] fp32.
//!
//! \par Snippet
//! \code
//! auto cache = varkv::ref::make_cuda_cache("scalekv:budget=0.1", geometry, schedule, {B, true});
//! cache->attend_commit(step, l, q, k, v, out, lse, stream);
//! cache->ledger().peak_bytes();
//! \endcode
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "varkv/core/kv_ledger.hpp"
#include "varkv/core/model_geometry.hpp"
#include "varkv/core/scale_schedule.hpp"
#include "varkv/core/tensor_view.hpp"

namespace varkv::ref {

class CudaCacheBackend {
 public:
  virtual ~CudaCacheBackend() = default;
  virtual void attend_commit(int step, int l, TensorView<const __nv_bfloat16, 4> q, TensorView<const __nv_bfloat16, 4> k,
                             TensorView<const __nv_bfloat16, 4> v, TensorView<__nv_bfloat16, 4> out,
                             TensorView<float, 3> lse, cudaStream_t stream) = 0;
  virtual const KvLedger& ledger() const = 0;
  //! "DeviceCompressedCache<preset>".
  virtual std::string name() const = 0;
  //! K/V bytes allocated on the device.
  virtual std::int64_t kv_bytes() const = 0;
};

//! The device cache of registry spec `spec` (K/V accounted as bf16). Throws varkv::Error for unknown
//! specs, bad parameters and policies the device cache does not run (AdaKV).
std::unique_ptr<CudaCacheBackend> make_cuda_cache(std::string_view spec, const ModelGeometry& geometry,
                                                  const ScaleSchedule& schedule, BatchShape batch);

}  // namespace varkv::ref
