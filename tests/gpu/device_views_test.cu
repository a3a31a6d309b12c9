// The host/device structs (ScaleTable, TensorView) give the same answers in kernels as on the host.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <varkv/core/cuda_check.cuh>
#include <varkv/core/scale_schedule.hpp>
#include <varkv/core/tensor_view.hpp>

#include "../support/random.hpp"

using namespace varkv;

namespace {
__global__ void scale_of_kernel(ScaleTable table, int* out) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p < table.total()) out[p] = table.scale_of(p);
}

// Transposes the last two axes of a strided 3-D view into a contiguous one.
__global__ void transpose_kernel(TensorView<const float, 3> in, TensorView<float, 3> out) {
  const int b = blockIdx.x;
  for (int i = threadIdx.x; i < in.shape(1) * in.shape(2); i += blockDim.x) {
    const int r = i / static_cast<int>(in.shape(2)), c = i % static_cast<int>(in.shape(2));
    out(b, c, r) = in(b, r, c);
  }
}
}  // namespace

TEST(DeviceViews, ScaleTableMatchesHostForEveryNamedSchedule) {
  for (const auto& s : {schedules::var_256(), schedules::var_512(), schedules::infinity_1024()}) {
    DeviceBuffer<int> out(static_cast<std::size_t>(s.total()));
    out.poison();
    scale_of_kernel<<<static_cast<unsigned>((s.total() + 255) / 256), 256>>>(s.table(), out.data());
    VARKV_CUDA_CHECK_LAUNCH("scale_of_kernel");
    const auto got = out.download();
    for (std::int64_t p = 0; p < s.total(); ++p) ASSERT_EQ(got[p], s.scale_of(p)) << s.name() << " position " << p;
  }
}

TEST(DeviceViews, StridedViewIndexingMatchesHost) {
  const auto seed = varkv::testing::fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  std::mt19937_64 rng(seed);
  // A [3, 5, 7] view inside a [3, 6, 9] buffer (padded rows and planes).
  auto host = varkv::testing::random_normal(3 * 6 * 9, rng);
  DeviceBuffer<float> in(host), out(3 * 7 * 5);
  out.poison();
  auto vin = make_view<3, const float>("in", in.data(), {3, 5, 7}, {54, 9, 1}, static_cast<std::int64_t>(in.size()));
  auto vout = make_view<3>("out", out.data(), {3, 7, 5}, static_cast<std::int64_t>(out.size()));
  transpose_kernel<<<3, 64>>>(vin, vout);
  VARKV_CUDA_CHECK_LAUNCH("transpose_kernel");
  const auto got = out.download();
  for (int b = 0; b < 3; ++b)
    for (int r = 0; r < 5; ++r)
      for (int c = 0; c < 7; ++c) ASSERT_EQ(got[(b * 7 + c) * 5 + r], host[b * 54 + r * 9 + c]);
}

TEST(DeviceViews, CudaErrorsBecomeVarkvErrors) {
  void* p = nullptr;
  try {
    VARKV_CUDA_CHECK(cudaMalloc(&p, std::size_t{1} << 62));
    FAIL() << "a 4 EiB allocation succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cudaErrorMemoryAllocation"), std::string::npos) << e.what();
  }
  cudaGetLastError();  // clear the sticky-free allocation error
}
