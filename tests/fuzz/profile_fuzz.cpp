// Fuzz driver for the calibration-profile reader (include/varkv/policy/classification/profile_json.hpp).
//
// With clang: a libFuzzer target (-fsanitize=fuzzer,address,undefined; see CMakeLists.txt):
//   varkv_profile_fuzz -max_total_time=60 CORPUS_DIR
// With any compiler (VARKV_FUZZ_REPLAY): a plain main that replays files or directories of inputs.
// Contract under test: every input either gives a profile whose table answers every (step, layer) of
// its declared extent, or throws varkv::Error; nothing else escapes (no std::bad_alloc from a huge
// declared extent, no nlohmann exception), and the sanitizers see no invalid access.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <varkv/core/error.hpp>
#include <varkv/policy/classification/profile_json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (auto source : {varkv::classification::ProfileSource::scalekv, varkv::classification::ProfileSource::amskv}) {
    try {
      const auto p = varkv::classification::profile_from_text(text, source, "fuzz-input");
      if (p.drafter.size() != static_cast<std::size_t>(p.layers) * p.scales) __builtin_trap();
      for (int s = 0; s < p.scales; ++s) {
        int n = 0;
        for (int l = 0; l < p.layers; ++l) n += p.classify(s, l) == varkv::LayerClass::drafter;
        if (n != p.drafters(s)) __builtin_trap();
      }
    } catch (const varkv::Error&) {
    }
  }
  return 0;
}

#if defined(VARKV_FUZZ_REPLAY)
int main(int argc, char** argv) {
  int runs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    auto run_file = [&](const std::filesystem::path& f) {
      std::ifstream in(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
      ++runs;
    };
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(p))
        if (e.is_regular_file()) run_file(e.path());
    } else {
      run_file(p);
    }
  }
  std::printf("replayed %d input(s)\n", runs);
  return 0;
}
#endif
