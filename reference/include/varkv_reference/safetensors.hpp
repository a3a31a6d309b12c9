#pragma once
//! \file
//! A strict reader of the safetensors format (8-byte little-endian header length, JSON header,
//! raw little-endian tensor bytes), loading every floating tensor as fp32.
//!
//! \par Overview
//! Checkpoints are small (a few hundred MB at most for the reference model), so the whole file is
//! read into memory once. Every field of the header is validated before any byte is interpreted:
//! header length against the file size, JSON syntax, known dtypes, shapes of non-negative integers,
//! `data_offsets` inside the data section, pairwise non-overlapping and equal to numel * dtype size
//! (all arithmetic overflow-checked). `__metadata__` is ignored. A hostile or truncated file ends in
//! `varkv::Error` naming the file and the problem, never in a crash.
//!
//! \par Snippet
//! \code
//! auto f = varkv::ref::SafetensorsFile::open("vae.safetensors");
//! const std::int64_t shape[] = {4096, 32};
//! varkv::ref::HostTensor emb = f.load("quantize.embedding.weight", shape);  // bf16/fp16/fp32 -> fp32
//! \endcode

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace varkv::ref {

//! An owned fp32 host tensor, row-major.
struct HostTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> data;
  std::int64_t numel() const;
};

//! "[a, b, c]" (used in every shape error message).
std::string format_shape(std::span<const std::int64_t> shape);

//! Bytes per element of a safetensors dtype name; 0 for an unknown name.
std::size_t safetensors_dtype_size(std::string_view dtype);

//! One parsed, validated safetensors file held in memory.
class SafetensorsFile {
 public:
  //! Reads and validates `path`; throws varkv::Error naming the file and the problem.
  static SafetensorsFile open(const std::string& path);
  //! Validates an in-memory image of a file; `label` names it in error messages (fuzzing, tests).
  static SafetensorsFile from_bytes(std::string label, std::vector<std::byte> bytes);

  const std::string& path() const { return path_; }
  bool contains(std::string_view name) const;
  //! Tensor names, sorted.
  std::vector<std::string> names() const;
  std::vector<std::int64_t> shape(std::string_view name) const;
  //! "F32", "F16", "BF16", "I64", "I32", ...
  std::string dtype(std::string_view name) const;

  //! Loads a F32/F16/BF16/F64 tensor as fp32. `expected_shape` empty = any shape. Missing tensor,
  //! wrong shape or non-floating dtype -> varkv::Error
  //! "<file>: tensor '<name>': expected shape [a, b], found [c, d]" / "<file>: tensor '<name>' is missing".
  HostTensor load(std::string_view name, std::span<const std::int64_t> expected_shape = {}) const;
  //! Loads an I64/I32 (also I16/I8/U8) tensor as int64, with the same checks as load().
  std::vector<std::int64_t> load_int(std::string_view name, std::span<const std::int64_t> expected_shape = {}) const;

 private:
  struct Entry {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::size_t begin = 0;  // absolute byte offsets into bytes_
    std::size_t end = 0;
  };
  const Entry& entry(std::string_view name, std::span<const std::int64_t> expected_shape) const;

  std::string path_;
  std::vector<std::byte> bytes_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace varkv::ref
