#pragma once
//! \file
//! Checked CUDA calls and an owning device buffer.
//!
//! Why: a failed CUDA call must surface as one varkv::Error naming the call, file and line, never as
//! a later crash or a silently wrong result.

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "varkv/core/error.hpp"

namespace varkv {

inline void cuda_check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(status), cudaGetErrorString(status), call, file, line);
}

//! Checks a kernel launch: the launch error now, execution errors at the next synchronising call.
inline void cuda_check_launch(const char* kernel, const char* file, int line) {
  cuda_check(cudaGetLastError(), kernel, file, line);
}

}  // namespace varkv

#define VARKV_CUDA_CHECK(call) ::varkv::cuda_check((call), #call, __FILE__, __LINE__)
#define VARKV_CUDA_CHECK_LAUNCH(kernel) ::varkv::cuda_check_launch(kernel, __FILE__, __LINE__)

namespace varkv {

//! Owning, move-only device allocation of `count` elements of T (plain cudaMalloc).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count_) VARKV_CUDA_CHECK(cudaMalloc(&data_, count_ * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  T* data() const { return data_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

  void upload(const std::vector<T>& host) {
    require(host.size() == count_, "device buffer: upload of {} elements into a buffer of {}", host.size(), count_);
    if (count_) VARKV_CUDA_CHECK(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_) VARKV_CUDA_CHECK(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  //! Fills every byte with `byte` (0xFF poisons floats as NaN).
  void poison(int byte = 0xFF) {
    if (count_) VARKV_CUDA_CHECK(cudaMemset(data_, byte, bytes()));
  }

 private:
  void release() noexcept {
    if (data_) cudaFree(data_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace varkv
