#pragma once
//! \file
//! Element types a KV cache can be stored in, for exact byte accounting.

#include <cstdint>
#include <string_view>

#include "varkv/core/error.hpp"

namespace varkv {

enum class DType : std::uint8_t { bf16, fp16, fp32 };

constexpr std::int64_t dtype_bytes(DType t) {
  switch (t) {
    case DType::bf16:
    case DType::fp16: return 2;
    case DType::fp32: return 4;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::bf16: return "bf16";
    case DType::fp16: return "fp16";
    case DType::fp32: return "fp32";
  }
  return "?";
}

inline DType parse_dtype(std::string_view name) {
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  if (name == "fp16" || name == "float16" || name == "half") return DType::fp16;
  if (name == "fp32" || name == "float32" || name == "float") return DType::fp32;
  fail("unknown element type '{}' (expected bf16, fp16 or fp32)", name);
}

//! Key and value element types. They may differ: the official VAR under bf16 autocast keeps K in
//! fp32 (q and k are L2-normalised in fp32) and V in bf16.
struct KvDTypes {
  DType key = DType::bf16;
  DType value = DType::bf16;

  constexpr std::int64_t bytes_per_element_pair() const { return dtype_bytes(key) + dtype_bytes(value); }
  static constexpr KvDTypes uniform(DType t) { return {t, t}; }
};

}  // namespace varkv
