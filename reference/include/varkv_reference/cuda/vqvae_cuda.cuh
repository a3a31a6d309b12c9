#pragma once
//! \file
//! The VQ-VAE half of VAR on the GPU: the quantizer's per-scale f_hat update / next-scale input and
//! the decoder, the CUDA backend of `varkv::ref::VqVae` (same object, different backend).
//!
//! \par Overview
//! `VqVaeCuda` binds to a host `VqVae` (it keeps a reference: the VqVae must outlive it) and uploads
//! its weights once. Per scale, `next_autoregressive_input` runs the official
//! `get_next_autoregressive_input` on device tensors: embedding lookup of the scale's tokens, bicubic
//! upsampling to P x P (none at the last scale), the partially shared phi conv, f_hat += ..., and area
//! downsampling to the next scale's token map, written token-major [B, pn_next^2, Cvae]; all fp32,
//! the CPU path's arithmetic (bicubic taps from the host code, every product and sum rounded as the
//! host rounds it, the phi conv's FMAs in the host AVX2 kernel's order: bit-identical where the host
//! takes that path, fp32 rounding otherwise). One thread per output element (phi: per 8 channels of
//! an output pixel), one launch per step for all B images.
//! `decode` runs post_quant_conv and the decoder in NCHW fp32: GroupNorm(32, eps 1e-6) (+ SiLU) one
//! CTA per (image, group) with double statistics; every conv is one cuBLAS strided-batched GEMM over
//! the images of a chunk, out (C_out x HW) = W (C_out x C_in k k) col (C_in k k x HW), after an
//! im2col kernel for 3x3 convs (nearest x2 upsampling folded into the im2col of the conv after it)
//! and reading its input directly for 1x1 convs; bias (and at the end clamp, (x + 1) / 2) in a small
//! per-plane kernel; the residual added by the second conv's GEMM (beta = 1). The single-head
//! attention of the lowest resolution: two strided-batched GEMMs around a row softmax (fp32).
//!
//! \par Precision
//! `DecoderPrecision::fp32` runs every GEMM in fp32 (CUBLAS_COMPUTE_32F, no TF32: the CPU path's
//! arithmetic up to summation order), `tf32` lets every GEMM round its inputs to TF32
//! (CUBLAS_COMPUTE_32F_FAST_TF32, fp32 accumulation), `bf16` stores the conv weights, the im2col and
//! the GroupNorm outputs in bf16 (fp32 accumulation and output; activations, biases, statistics and
//! the attention's GEMMs stay fp32). The test suite states the error of each against the CPU decoder
//! (golden 256 px VQ-VAE, host emulation of the same roundings: fp32 3e-6, tf32 2-4e-3, bf16 1.7e-2
//! max abs on [0, 1] pixels). The default is tf32: it keeps the image within the 1e-2 the GPU path
//! promises against the CPU one; bf16 is what the official code runs under autocast (the end-to-end
//! benchmark's choice beside the PyTorch peer).
//!
//! \par Decoder scratch and chunking
//! Per chunk of images the decoder keeps three fp32 activation buffers (residual stream, two
//! temporaries), the GroupNorm output and the im2col matrix (both in the GEMM input type) and the
//! attention probabilities, each sized for the largest tensor of its role; at 256 px with ch = 160
//! that is ~320 MiB per image in bf16 (180 MiB of it im2col) and ~520 MiB in fp32 / tf32. The same
//! GEMM shape with another batch count may run another cuBLAS kernel, so images decoded in chunks
//! of different sizes agree to rounding, not always bit for bit; equal chunk sizes give equal bits.
//!
//! \par Threads
//! One call at a time per object (the scratch and the cuBLAS handle are shared); `stream` orders
//! the work, and scratch growth synchronises the device before it frees the old buffers.
//!
//! \par Errors
//! Bad sizes (B, si, null pointers, token values outside the vocabulary where checked) throw
//! `varkv::Error` naming them; every CUDA / cuBLAS call is checked.
//!
//! This header is plain C++ (no CUDA syntax): streams travel as `void*` (a `cudaStream_t`).

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {

enum class DecoderPrecision { fp32, tf32, bf16 };

class VqVaeCuda {
 public:
  //! Uploads `vae`'s weights to the current device; `vae` must outlive this object.
  explicit VqVaeCuda(const VqVae& vae, DecoderPrecision precision = DecoderPrecision::tf32);
  ~VqVaeCuda();
  VqVaeCuda(VqVaeCuda&&) noexcept;
  VqVaeCuda& operator=(VqVaeCuda&&) noexcept;
  VqVaeCuda(const VqVaeCuda&) = delete;
  VqVaeCuda& operator=(const VqVaeCuda&) = delete;

  const VqVae& host() const;
  DecoderPrecision precision() const;
  //! Device bytes of the uploaded weights.
  std::int64_t weight_bytes() const;
  //! Device bytes of the scratch kept between calls (quantizer + decoder; grows with B / chunk).
  std::int64_t scratch_bytes() const;
  //! The number of images `decode(..., B, ..., max_chunk)` would decode at a time (max_chunk = 0:
  //! bounded by 2 GiB of im2col scratch and by free device memory, at least 1).
  int decode_chunk(int B, int max_chunk = 0) const;
  //! Frees the decoder's chunk scratch (synchronises the device first); the next decode allocates
  //! it again. A generation loop calls it after decoding so that the next batch's KV cache and
  //! scratch do not sit beside gigabytes of idle decoder buffers.
  void release_decode_scratch() const;

  //! Device tensors, asynchronous on `stream` (a cudaStream_t): f_hat [B, Cvae, P, P] fp32 (in place),
  //! tokens [B, pn * pn] int32 of scale si, next [B, pn_next^2, Cvae] fp32 (ignored, may be null, at
  //! the last scale). Token values are not checked here (the caller's sampler produces them); one
  //! outside [0, vocab) turns its embedding into NaN instead of reading out of bounds.
  void next_autoregressive_input(int si, float* f_hat, int B, const std::int32_t* tokens, float* next,
                                 void* stream) const;
  //! Device tensors, asynchronous on `stream`: f_hat [B, Cvae, P, P] -> images [B, 3, 16P, 16P] in
  //! [0, 1]. Scratch is allocated on first use and kept for the largest chunk seen; `max_chunk`
  //! images are decoded at a time (0 = choose from free memory).
  void decode(const float* f_hat, int B, float* images, void* stream, int max_chunk = 0) const;

  //! Host-tensor conveniences (upload, run, download, synchronise): the same contract as the host
  //! VqVae's methods.
  std::vector<float> next_autoregressive_input(int si, std::vector<float>& f_hat, int B,
                                               std::span<const std::int32_t> tokens) const;
  std::vector<float> decode(std::span<const float> f_hat, int B) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace varkv::ref
