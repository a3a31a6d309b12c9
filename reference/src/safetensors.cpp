#include "varkv_reference/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>

#include <nlohmann/json.hpp>

#include <varkv/core/error.hpp>

namespace varkv::ref {

namespace {

// The reference implementation refuses headers above 100 MB; so do we (a header is a few KB).
constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

struct DTypeInfo {
  std::string_view name;
  std::size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <class T>
T read_le(const std::byte* p) {
  // Safetensors is little-endian, as is every platform varkv targets.
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& path, std::string_view name) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    fail("{}: tensor '{}': shape overflows the byte count", path, name);
  return a * b;
}

std::int64_t json_offset(const nlohmann::json& v, const std::string& path, const std::string& name,
                         std::string_view what) {
  if (!v.is_number_unsigned()) fail("{}: tensor '{}': {} must be non-negative integers", path, name, what);
  const auto u = v.get<std::uint64_t>();
  if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    fail("{}: tensor '{}': {} value {} is too large", path, name, what, u);
  return static_cast<std::int64_t>(u);
}

}  // namespace

std::int64_t HostTensor::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string format_shape(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::size_t safetensors_dtype_size(std::string_view dtype) {
  for (const auto& d : kDTypes)
    if (d.name == dtype) return d.size;
  return 0;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) fail("{}: cannot open file: no such file", path);
  if (ec) fail("{}: cannot open file: {}", path, ec.message());
  if (!std::filesystem::is_regular_file(st)) fail("{}: cannot open file: not a regular file", path);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  require(in.good(), "{}: cannot open file", path);
  const std::streamoff size = in.tellg();
  require(size >= 0, "{}: cannot determine the file size", path);
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), size);
  require(in.good() || (size == 0), "{}: read error", path);
  return from_bytes(path, std::move(bytes));
}

SafetensorsFile SafetensorsFile::from_bytes(std::string label, std::vector<std::byte> bytes) {
  SafetensorsFile f;
  f.path_ = std::move(label);
  f.bytes_ = std::move(bytes);
  const std::string& path = f.path_;
  const std::size_t file_size = f.bytes_.size();

  require(file_size >= 8, "{}: not a safetensors file: {} bytes, shorter than the 8-byte header length", path,
          file_size);
  const auto header_len = read_le<std::uint64_t>(f.bytes_.data());
  require(header_len <= kMaxHeaderBytes, "{}: header length {} exceeds the 100 MB limit", path, header_len);
  require(header_len <= file_size - 8, "{}: header length {} exceeds the file size {} (truncated file?)", path,
          header_len, file_size);
  const std::size_t data_begin = 8 + static_cast<std::size_t>(header_len);
  const std::size_t data_size = file_size - data_begin;

  const char* header_chars = reinterpret_cast<const char*>(f.bytes_.data() + 8);
  nlohmann::json header = nlohmann::json::parse(header_chars, header_chars + header_len, nullptr,
                                                /*allow_exceptions=*/false);
  require(!header.is_discarded(), "{}: header is not valid JSON", path);
  require(header.is_object(), "{}: header is not a JSON object", path);

  struct Span {
    std::size_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const auto& v = it.value();
    require(v.is_object(), "{}: tensor '{}': header entry is not an object", path, name);
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    require(dt != v.end() && dt->is_string(), "{}: tensor '{}': missing or non-string 'dtype'", path, name);
    require(sh != v.end() && sh->is_array(), "{}: tensor '{}': missing or non-array 'shape'", path, name);
    require(off != v.end() && off->is_array() && off->size() == 2,
            "{}: tensor '{}': 'data_offsets' must be an array of two integers", path, name);
    Entry e;
    e.dtype = dt->get<std::string>();
    const std::size_t esize = safetensors_dtype_size(e.dtype);
    require(esize != 0, "{}: tensor '{}': unknown dtype '{}'", path, name, e.dtype);
    std::uint64_t numel = 1;
    for (const auto& d : *sh) {
      e.shape.push_back(json_offset(d, path, name, "shape"));
      numel = checked_mul(numel, static_cast<std::uint64_t>(e.shape.back()), path, name);
    }
    const std::uint64_t nbytes = checked_mul(numel, esize, path, name);
    const std::int64_t b = json_offset((*off)[0], path, name, "data_offsets");
    const std::int64_t en = json_offset((*off)[1], path, name, "data_offsets");
    require(b <= en, "{}: tensor '{}': data_offsets [{}, {}] are reversed", path, name, b, en);
    require(static_cast<std::uint64_t>(en) <= data_size,
            "{}: tensor '{}': data_offsets [{}, {}] run past the data section of {} bytes (truncated file?)", path,
            name, b, en, data_size);
    require(static_cast<std::uint64_t>(en - b) == nbytes,
            "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", path, name, b, en, en - b,
            e.dtype, format_shape(e.shape), nbytes);
    e.begin = data_begin + static_cast<std::size_t>(b);
    e.end = data_begin + static_cast<std::size_t>(en);
    auto [pos, inserted] = f.entries_.emplace(name, std::move(e));
    require(inserted, "{}: tensor '{}' appears twice", path, name);
    spans.push_back({pos->second.begin, pos->second.end, &pos->first});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    // Empty tensors occupy no bytes and may share an offset with anything.
    if (spans[i].begin == spans[i].end || spans[i - 1].begin == spans[i - 1].end) continue;
    require(spans[i].begin >= spans[i - 1].end, "{}: tensors '{}' and '{}' overlap in the data section", path,
            *spans[i - 1].name, *spans[i].name);
  }
  return f;
}

bool SafetensorsFile::contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;  // std::map keeps them sorted
}

const SafetensorsFile::Entry& SafetensorsFile::entry(std::string_view name,
                                                     std::span<const std::int64_t> expected_shape) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) fail("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if (!expected_shape.empty() &&
      !std::equal(expected_shape.begin(), expected_shape.end(), e.shape.begin(), e.shape.end()))
    fail("{}: tensor '{}': expected shape {}, found {}", path_, name, format_shape(expected_shape),
         format_shape(e.shape));
  return e;
}

std::vector<std::int64_t> SafetensorsFile::shape(std::string_view name) const { return entry(name, {}).shape; }

std::string SafetensorsFile::dtype(std::string_view name) const { return entry(name, {}).dtype; }

HostTensor SafetensorsFile::load(std::string_view name, std::span<const std::int64_t> expected_shape) const {
  const Entry& e = entry(name, expected_shape);
  HostTensor t;
  t.name = std::string(name);
  t.shape = e.shape;
  const std::byte* p = bytes_.data() + e.begin;
  const std::size_t esize = safetensors_dtype_size(e.dtype);
  const std::size_t n = (e.end - e.begin) / esize;
  t.data.resize(n);
  if (e.dtype == "F32") {
    for (std::size_t i = 0; i < n; ++i) t.data[i] = read_le<float>(p + 4 * i);
  } else if (e.dtype == "F16") {
    for (std::size_t i = 0; i < n; ++i) t.data[i] = half_to_float(read_le<std::uint16_t>(p + 2 * i));
  } else if (e.dtype == "BF16") {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t bits = static_cast<std::uint32_t>(read_le<std::uint16_t>(p + 2 * i)) << 16;
      std::memcpy(&t.data[i], &bits, sizeof(float));
    }
  } else if (e.dtype == "F64") {
    for (std::size_t i = 0; i < n; ++i) t.data[i] = static_cast<float>(read_le<double>(p + 8 * i));
  } else {
    fail("{}: tensor '{}': dtype {} is not a floating type (F32, F16, BF16, F64)", path_, name, e.dtype);
  }
  return t;
}

std::vector<std::int64_t> SafetensorsFile::load_int(std::string_view name,
                                                    std::span<const std::int64_t> expected_shape) const {
  const Entry& e = entry(name, expected_shape);
  const std::byte* p = bytes_.data() + e.begin;
  const std::size_t esize = safetensors_dtype_size(e.dtype);
  const std::size_t n = (e.end - e.begin) / esize;
  std::vector<std::int64_t> out(n);
  if (e.dtype == "I64") {
    for (std::size_t i = 0; i < n; ++i) out[i] = read_le<std::int64_t>(p + 8 * i);
  } else if (e.dtype == "I32") {
    for (std::size_t i = 0; i < n; ++i) out[i] = read_le<std::int32_t>(p + 4 * i);
  } else if (e.dtype == "I16") {
    for (std::size_t i = 0; i < n; ++i) out[i] = read_le<std::int16_t>(p + 2 * i);
  } else if (e.dtype == "I8") {
    for (std::size_t i = 0; i < n; ++i) out[i] = read_le<std::int8_t>(p + i);
  } else if (e.dtype == "U8") {
    for (std::size_t i = 0; i < n; ++i) out[i] = read_le<std::uint8_t>(p + i);
  } else {
    fail("{}: tensor '{}': dtype {} is not an integer type (I64, I32, I16, I8, U8)", path_, name, e.dtype);
  }
  return out;
}

}  // namespace varkv::ref
