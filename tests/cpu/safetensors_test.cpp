#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <varkv/core/error.hpp>
#include <varkv_reference/safetensors.hpp>

#include "../support/random.hpp"

using varkv::ref::HostTensor;
using varkv::ref::SafetensorsFile;
using varkv::testing::fresh_seed;
using varkv::testing::seed_note;

namespace {

// A hand-built safetensors image: header JSON + raw bytes, written in declaration order.
struct Builder {
  nlohmann::json header = nlohmann::json::object();
  std::vector<std::byte> data;

  Builder& add(const std::string& name, const std::string& dtype, std::vector<std::int64_t> shape, const void* bytes,
               std::size_t n) {
    const std::size_t begin = data.size();
    data.resize(begin + n);
    if (n) std::memcpy(data.data() + begin, bytes, n);
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, begin + n}}};
    return *this;
  }
  std::vector<std::byte> bytes() const { return image(header.dump()); }
  std::vector<std::byte> image(const std::string& json) const {
    std::vector<std::byte> out(8 + json.size() + data.size());
    const std::uint64_t n = json.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, json.data(), json.size());
    if (!data.empty()) std::memcpy(out.data() + 8 + json.size(), data.data(), data.size());
    return out;
  }
};

std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<std::uint16_t>(u >> 16);  // exact for the values used below
}

std::string error_of(const std::vector<std::byte>& bytes) {
  try {
    SafetensorsFile::from_bytes("t.safetensors", bytes);
  } catch (const varkv::Error& e) {
    return e.what();
  }
  return "";
}

std::filesystem::path temp_file(const std::string& name, const std::vector<std::byte>& bytes) {
  const auto p = std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()));
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return p;
}

}  // namespace

TEST(Safetensors, LoadsF32F16Bf16AsFp32AndIntegers) {
  const float f32[] = {1.0f, -2.5f, 0.1f, 3.0e-39f, std::numeric_limits<float>::infinity(), 65504.0f};
  // fp16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), 2^-14 * 0.5 (subnormal), -0, +inf
  const std::uint16_t f16[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0200, 0x8000, 0x7c00};
  const float f16_expect[] = {1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -15), -0.0f,
                              std::numeric_limits<float>::infinity()};
  const float bf_src[] = {1.0f, -0.5f, 3.0f, 1024.0f};
  std::uint16_t bf16[4];
  for (int i = 0; i < 4; ++i) bf16[i] = to_bf16(bf_src[i]);
  const std::int64_t i64[] = {-1, 0, 4095, std::numeric_limits<std::int64_t>::max()};
  const std::int32_t i32[] = {7, -207};
  Builder b;
  b.add("w.f32", "F32", {2, 3}, f32, sizeof f32)
      .add("w.f16", "F16", {7}, f16, sizeof f16)
      .add("a.bf16", "BF16", {2, 2}, bf16, sizeof bf16)
      .add("i.i64", "I64", {4}, i64, sizeof i64)
      .add("i.i32", "I32", {1, 2}, i32, sizeof i32)
      .add("empty", "F32", {0, 5}, nullptr, 0);
  b.header["__metadata__"] = {{"format", "pt"}};
  const auto path = temp_file("varkv_st_ok", b.bytes());
  const auto f = SafetensorsFile::open(path.string());
  std::filesystem::remove(path);

  EXPECT_EQ(f.path(), path.string());
  const std::vector<std::string> names = {"a.bf16", "empty", "i.i32", "i.i64", "w.f16", "w.f32"};
  EXPECT_EQ(f.names(), names);  // sorted, __metadata__ ignored
  EXPECT_FALSE(f.contains("__metadata__"));
  EXPECT_TRUE(f.contains("w.f16"));
  EXPECT_EQ(f.dtype("a.bf16"), "BF16");
  EXPECT_EQ(f.shape("w.f32"), (std::vector<std::int64_t>{2, 3}));

  const std::int64_t s23[] = {2, 3};
  const HostTensor t = f.load("w.f32", s23);
  EXPECT_EQ(t.name, "w.f32");
  EXPECT_EQ(t.numel(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(std::memcmp(&t.data[i], &f32[i], 4), 0) << i;
  const HostTensor h = f.load("w.f16");
  ASSERT_EQ(h.data.size(), 7u);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(h.data[i], f16_expect[i]) << i;
    EXPECT_EQ(std::signbit(h.data[i]), std::signbit(f16_expect[i])) << i;
  }
  const HostTensor a = f.load("a.bf16");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.data[i], bf_src[i]);
  EXPECT_EQ(f.load_int("i.i64"), (std::vector<std::int64_t>(std::begin(i64), std::end(i64))));
  EXPECT_EQ(f.load_int("i.i32"), (std::vector<std::int64_t>{7, -207}));
  EXPECT_EQ(f.load("empty").numel(), 0);
  // fp16 NaN stays NaN.
  const std::uint16_t nan16 = 0x7e00;
  Builder n;
  n.add("n", "F16", {1}, &nan16, 2);
  EXPECT_TRUE(std::isnan(SafetensorsFile::from_bytes("n", n.bytes()).load("n").data[0]));
}

TEST(Safetensors, MissingAndMisShapedTensorsGiveExactMessages) {
  const float v[6] = {};
  Builder b;
  b.add("blocks.0.attn.mat_qkv.weight", "F32", {3, 2}, v, sizeof v).add("ids", "I64", {0}, nullptr, 0);
  const auto f = SafetensorsFile::from_bytes("var.safetensors", b.bytes());
  const std::int64_t want[] = {2, 3};
  try {
    f.load("blocks.0.attn.mat_qkv.weight", want);
    FAIL() << "no error";
  } catch (const varkv::Error& e) {
    EXPECT_STREQ(e.what(), "var.safetensors: tensor 'blocks.0.attn.mat_qkv.weight': expected shape [2, 3], found [3, 2]");
  }
  try {
    f.load("pos_start");
    FAIL() << "no error";
  } catch (const varkv::Error& e) {
    EXPECT_STREQ(e.what(), "var.safetensors: tensor 'pos_start' is missing");
  }
  EXPECT_THROW(f.load_int("missing"), varkv::Error);
  EXPECT_THROW(f.load_int("blocks.0.attn.mat_qkv.weight"), varkv::Error);  // float as int
  EXPECT_THROW(f.load("ids"), varkv::Error);                               // int as float
  EXPECT_THROW(f.shape("nope"), varkv::Error);
  const std::int64_t rank1[] = {6};
  EXPECT_THROW(f.load("blocks.0.attn.mat_qkv.weight", rank1), varkv::Error);
}

TEST(Safetensors, RejectsMalformedFilesWithOneLineErrors) {
  const float v[4] = {1, 2, 3, 4};
  Builder ok;
  ok.add("a", "F32", {2}, v, 8).add("b", "F32", {2}, v + 2, 8);
  ASSERT_EQ(error_of(ok.bytes()), "");

  const auto with_header = [&](const std::string& json) { return ok.image(json); };
  struct Case {
    std::vector<std::byte> bytes;
    const char* needle;
  };
  std::vector<Case> cases;
  cases.push_back({{}, "shorter than the 8-byte header length"});
  cases.push_back({std::vector<std::byte>(5), "shorter than the 8-byte header length"});
  auto big_len = ok.bytes();
  big_len[0] = std::byte{0xff};
  big_len[1] = std::byte{0xff};
  cases.push_back({big_len, "exceeds the file size"});
  auto huge_len = ok.bytes();
  std::memset(huge_len.data(), 0xff, 8);
  cases.push_back({huge_len, "exceeds the 100 MB limit"});
  cases.push_back({with_header("{\"a\": "), "not valid JSON"});
  cases.push_back({with_header("[1, 2]"), "not a JSON object"});
  cases.push_back({with_header(R"({"a": 5})"), "not an object"});
  cases.push_back({with_header(R"({"a": {"dtype": "F48", "shape": [2], "data_offsets": [0, 8]}})"), "unknown dtype"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})"),
                   "must be non-negative integers"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})"),
                   "must be non-negative integers"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})"),
                   "array of two integers"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})"), "non-array 'shape'"});
  cases.push_back({with_header(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})"), "non-string 'dtype'"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})"), "reversed"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 24]}})"),
                   "run past the data section"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})"), "needs 12"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})"),
                   "overflows"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551615, 8]}})"),
                   "too large"});
  cases.push_back({with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})"),
                   "overlap"});
  auto truncated = ok.bytes();
  truncated.pop_back();
  cases.push_back({truncated, "run past the data section"});
  for (const auto& c : cases) {
    const std::string msg = error_of(c.bytes);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << "expected '" << c.needle << "', got '" << msg << "'";
    EXPECT_EQ(msg.rfind("t.safetensors: ", 0), 0u) << msg;  // names the file
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;    // one line
  }
  try {
    SafetensorsFile::open("/nonexistent/varkv.safetensors");
    FAIL();
  } catch (const varkv::Error& e) {
    EXPECT_EQ(std::string(e.what()), "/nonexistent/varkv.safetensors: cannot open file: no such file");
  }
  EXPECT_THROW(SafetensorsFile::open(std::filesystem::temp_directory_path().string()), varkv::Error);
}

namespace {

// Random structural damage: bit flips, byte overwrites with JSON-significant characters,
// insertions, deletions, truncation, and edits of the 8-byte length prefix.
std::vector<std::byte> mutate(std::vector<std::byte> s, std::mt19937_64& rng) {
  static const char kChars[] = "{}[]\":,-0123456789eE.ntfFIU_ \\";
  std::uniform_int_distribution<int> op_dist(0, 9);
  const int ops = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < ops; ++k) {
    const std::size_t n = s.size();
    const std::size_t pos = n ? rng() % n : 0;
    switch (op_dist(rng)) {
      case 0:
        if (n) s[pos] ^= std::byte{static_cast<unsigned char>(1u << (rng() % 8))};
        break;
      case 1:
        if (n) s[pos] = std::byte{static_cast<unsigned char>(kChars[rng() % (sizeof kChars - 1)])};
        break;
      case 2:
        s.insert(s.begin() + static_cast<std::ptrdiff_t>(pos),
                 std::byte{static_cast<unsigned char>(kChars[rng() % (sizeof kChars - 1)])});
        break;
      case 3:
        if (n) s.erase(s.begin() + static_cast<std::ptrdiff_t>(pos));
        break;
      case 4:
        s.resize(n ? rng() % n : 0);
        break;
      case 5:
        if (n >= 8) s[rng() % 8] = std::byte{static_cast<unsigned char>(rng())};
        break;
      case 6:  // digits -> a long number (overflow paths)
        if (n) {
          const std::string big = "99999999999999999999";
          s.insert(s.begin() + static_cast<std::ptrdiff_t>(pos), reinterpret_cast<const std::byte*>(big.data()),
                   reinterpret_cast<const std::byte*>(big.data() + big.size()));
        }
        break;
      case 7:
        if (n) s[pos] = std::byte{static_cast<unsigned char>(rng())};
        break;
      default:  // another digit in place of a digit: keeps the JSON valid, moves offsets and shapes
        for (std::size_t i = pos; i < n; ++i)
          if (s[i] >= std::byte{'0'} && s[i] <= std::byte{'9'}) {
            s[i] = std::byte{static_cast<unsigned char>('0' + rng() % 10)};
            break;
          }
        break;
    }
  }
  return s;
}

// Parses and, when accepted, loads every tensor the way a caller would; only varkv::Error may escape.
void exercise(const std::vector<std::byte>& bytes, int& accepted) {
  try {
    const auto f = SafetensorsFile::from_bytes("fuzz", bytes);
    ++accepted;
    for (const auto& name : f.names()) {
      try {
        (void)f.load(name);
      } catch (const varkv::Error&) {
      }
      try {
        (void)f.load_int(name);
      } catch (const varkv::Error&) {
      }
    }
  } catch (const varkv::Error&) {
  }
}

}  // namespace

TEST(Safetensors, SurvivesThousandsOfMutatedFiles) {
  const std::uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);

  // Hand-built small files with every dtype.
  std::vector<std::vector<std::byte>> seeds;
  {
    const float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    Builder b;
    b.add("x", "F32", {2, 2}, v, 16).add("y", "F16", {4}, v, 8).add("z", "BF16", {1, 4}, v + 4, 8);
    b.add("i", "I64", {1}, v, 8).add("j", "I32", {2}, v, 8).add("k", "U8", {3}, v, 3).add("e", "F64", {0}, v, 0);
    b.header["__metadata__"] = {{"k", "v"}};
    seeds.push_back(b.bytes());
    Builder c;
    c.add("a", "I8", {1, 1, 1}, v, 1).add("b", "BOOL", {2}, v, 2).add("c", "I16", {1}, v, 2);
    seeds.push_back(c.bytes());
  }
  // The golden var.safetensors header (plus a short prefix of its data section).
  std::vector<std::byte> golden_header;
  const std::string golden = std::string(VARKV_GOLDEN_DIR) + "/var_d4_256/var.safetensors";
  if (std::ifstream in{golden, std::ios::binary}) {
    std::uint64_t n = 0;
    in.read(reinterpret_cast<char*>(&n), 8);
    if (in && n < (1u << 20)) {
      golden_header.resize(8 + n + 16384);
      in.seekg(0);
      in.read(reinterpret_cast<char*>(golden_header.data()), static_cast<std::streamsize>(golden_header.size()));
      golden_header.resize(static_cast<std::size_t>(in.gcount()));
    }
  } else if (const char* ci = std::getenv("CI"); ci && std::string(ci) == "true") {
    FAIL() << "golden file " << golden << " is missing (CI=true)";
  }

  int accepted = 0, runs = 0;
  for (int i = 0; i < 3000; ++i, ++runs) exercise(mutate(seeds[i % seeds.size()], rng), accepted);
  if (!golden_header.empty())
    for (int i = 0; i < 1000; ++i, ++runs) exercise(mutate(golden_header, rng), accepted);
  RecordProperty("accepted", accepted);
  std::printf("[ fuzz     ] %d mutated files, %d accepted by the parser\n", runs, accepted);
  EXPECT_GT(accepted, 0);  // the mutations must also reach the loading paths
}

TEST(Safetensors, ReadsFilesWrittenByTheCheckpointConverter) {
  // reference/scripts/convert_checkpoint.py writes safetensors by hand when the `safetensors`
  // package is absent; its sample file must load here with the same names, shapes and values.
  if (std::system("python3 -c 'import json, struct' > /dev/null 2>&1") != 0) {
    if (const char* ci = std::getenv("CI"); ci && std::string(ci) == "true") FAIL() << "python3 missing (CI=true)";
    GTEST_SKIP() << "python3 not available: the converter's writer is not cross-checked";
  }
  const auto path = std::filesystem::temp_directory_path() / ("varkv_convert_sample." + std::to_string(::getpid()));
  const std::string cmd = std::string("python3 ") + VARKV_SOURCE_DIR +
                          "/reference/scripts/convert_checkpoint.py --self-test --self-test-output " + path.string() +
                          " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto f = SafetensorsFile::open(path.string());
  std::filesystem::remove(path);
  const std::vector<std::string> names = {"blocks.0.attn.scale_mul_1H11", "decoder.conv_in.weight", "empty", "lvl_1L",
                                          "quantize.embedding.weight"};
  EXPECT_EQ(f.names(), names);
  const std::int64_t emb_shape[] = {2, 2};
  EXPECT_EQ(f.load("quantize.embedding.weight", emb_shape).data, (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));
  EXPECT_EQ(f.load("blocks.0.attn.scale_mul_1H11").data, (std::vector<float>{1.0f, -0.25f, 3.0f}));
  EXPECT_EQ(f.load_int("lvl_1L"), (std::vector<std::int64_t>{0, 1, 1, 2, 9}));
  EXPECT_EQ(f.load("decoder.conv_in.weight").numel(), 12);
  EXPECT_EQ(f.shape("empty"), (std::vector<std::int64_t>{0, 4}));
}
