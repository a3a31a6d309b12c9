#pragma once
//! \file
//! Internal plumbing shared by the reference CUDA translation units (var_model_cuda.cu,
//! vqvae_cuda.cu): checked cuBLAS calls and an owned non-blocking stream.
//!
//! Why a header of its own: both units need the same error reporting and the same stream semantics,
//! and two private copies would drift apart. It sits next to the sources, not under include/, because
//! it is no part of the library's interface.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"

namespace varkv::ref::detail {

//! A failed cuBLAS call surfaces as one varkv::Error naming the call, file and line, as
//! VARKV_CUDA_CHECK does for the runtime.
inline void blas_check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS error {} ({}) in {} at {}:{}", static_cast<int>(status), cublasGetStatusString(status), call, file,
         line);
}

//! An owned stream, non-blocking so that it does not synchronise with work on the legacy default
//! stream; destroyed with its owner, also when an error unwinds.
class Stream {
 public:
  Stream() { VARKV_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace varkv::ref::detail

#define VARKV_BLAS_CHECK(call) ::varkv::ref::detail::blas_check((call), #call, __FILE__, __LINE__)
