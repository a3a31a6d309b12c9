#pragma once
//! \file
//! Portability macros shared by host-only and host/device headers.
//!
//! Why: the same small structs (scale tables, views, policy parameters) are read by the CPU
//! references and by the CUDA kernels, so their accessors must compile under both g++ and nvcc.

#if defined(__CUDACC__)
#define VARKV_HOST_DEVICE __host__ __device__
#define VARKV_DEVICE __device__
#else
#define VARKV_HOST_DEVICE
#define VARKV_DEVICE
#endif

#if defined(__CUDA_ARCH__)
#define VARKV_IN_DEVICE_CODE 1
#else
#define VARKV_IN_DEVICE_CODE 0
#endif
