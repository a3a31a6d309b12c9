// Device KV caches of the GPU reference model: every registry preset bound to
// varkv::DeviceCompressedCache behind CudaCacheBackend (reference/include/varkv_reference/cuda/
// cache_backend.cuh). This translation unit holds the policies' kernel instantiations, so the
// transformer's (var_model_cuda.cu) compiles once for all of them.
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "varkv/cache/device_compressed_cache.cuh"
#include "varkv/policy/registry.hpp"
#include "varkv_reference/cuda/cache_backend.cuh"
#include "varkv_reference/cuda/var_model_cuda.cuh"

namespace varkv::ref {

namespace {

template <class Policy>
class DeviceCacheBackend final : public CudaCacheBackend {
 public:
  DeviceCacheBackend(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch, Policy policy,
                     std::string preset)
      : cache_(geometry, schedule, batch, {DType::bf16, DType::bf16}, std::move(policy)), preset_(std::move(preset)) {}

  void attend_commit(int step, int l, TensorView<const bf16, 4> q, TensorView<const bf16, 4> k,
                     TensorView<const bf16, 4> v, TensorView<bf16, 4> out, TensorView<float, 3> lse,
                     cudaStream_t stream) override {
    cache_.attend(step, l, q, k, v, 1.0f, out, lse, stream);
    cache_.commit(step, l, k, v, stream);
  }
  const KvLedger& ledger() const override { return cache_.ledger(); }
  std::string name() const override { return "DeviceCompressedCache<" + preset_ + ">"; }
  std::int64_t kv_bytes() const override { return cache_.kv_bytes(); }

 private:
  DeviceCompressedCache<Policy> cache_;
  std::string preset_;
};

template <class Policy>
constexpr bool kHeadSplit = varkv::detail::declares_head_split<typename Policy::budget_type>;

}  // namespace

void check_cuda_policy(std::string_view spec) {
  with_policy(spec, [&](auto policy) {
    using Policy = decltype(policy);
    if constexpr (kHeadSplit<Policy>)
      fail("policy '{}': the head-adaptive budget split ('{}', preset AdaKV) is not supported by the GPU cache; use "
           "the CPU path for it",
           spec, Policy::budget_type::name);
  });
}

std::unique_ptr<CudaCacheBackend> make_cuda_cache(std::string_view spec, const ModelGeometry& geometry,
                                                  const ScaleSchedule& schedule, BatchShape batch) {
  check_cuda_policy(spec);
  const std::string preset = parse_policy_spec(spec).name;
  return with_policy(spec, [&](auto policy) -> std::unique_ptr<CudaCacheBackend> {
    using Policy = decltype(policy);
    if constexpr (kHeadSplit<Policy>) {
      fail("policy '{}' is not supported by the GPU cache", spec);  // refused above already
    } else {
      return std::make_unique<DeviceCacheBackend<Policy>>(geometry, schedule, batch, std::move(policy), preset);
    }
  });
}

}  // namespace varkv::ref
