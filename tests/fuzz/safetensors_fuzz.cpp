// Fuzz driver for the safetensors parser (reference/src/safetensors.cpp).
//
// With clang: built as a libFuzzer target (-fsanitize=fuzzer,address,undefined; see CMakeLists.txt):
//   varkv_safetensors_fuzz -max_total_time=60 CORPUS_DIR
// With any compiler (VARKV_FUZZ_REPLAY): a plain main that replays files or directories of inputs,
// e.g. a crash artifact, so a finding can be debugged without libFuzzer.
// Contract under test: every input either parses or throws varkv::Error; nothing else escapes,
// and the sanitizers see no invalid access while every accepted tensor is loaded.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include <varkv/core/error.hpp>
#include <varkv_reference/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>(data[i]);
  try {
    const auto f = varkv::ref::SafetensorsFile::from_bytes("fuzz-input", std::move(bytes));
    for (const auto& name : f.names()) {
      (void)f.shape(name);
      (void)f.dtype(name);
      try {
        const auto t = f.load(name);
        if (static_cast<std::int64_t>(t.data.size()) != t.numel()) __builtin_trap();  // loader/shape disagree
      } catch (const varkv::Error&) {
      }
      try {
        (void)f.load_int(name);
      } catch (const varkv::Error&) {
      }
    }
  } catch (const varkv::Error&) {
  }
  return 0;
}

#ifdef VARKV_FUZZ_REPLAY
namespace {
int replay(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  const std::vector<char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(buf.data()), buf.size());
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  int runs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(p))
        if (e.is_regular_file()) runs += replay(e.path());
    } else {
      runs += replay(p);
    }
  }
  std::printf("replayed %d inputs without a crash\n", runs);
  return 0;
}
#endif
