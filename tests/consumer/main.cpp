// A separate project that found varkv with find_package: it must compile against the installed
// headers and compute the documented byte count.
#include <cstdio>

#include <varkv/varkv.hpp>

int main() {
  const auto ledger = varkv::KvLedger::full(varkv::geometries::var_d30(), varkv::schedules::var_256(),
                                            varkv::BatchShape{1, true}, varkv::KvDTypes::uniform(varkv::DType::bf16));
  const long long expected = 30LL * 680 * 1920 * 2 * 2 * 2;
  std::printf("var-d30 256px bf16 KV per image: %lld bytes (expected %lld)\n",
              static_cast<long long>(ledger.peak_bytes()), expected);
  return ledger.peak_bytes() == expected ? 0 : 1;
}
