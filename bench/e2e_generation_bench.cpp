// varkv_bench_e2e_generation: end-to-end VAR generation on the GPU (issue 5), random weights.
//
// First the VQ-VAE alone (--vae-batch images decoded per precision with its TFLOP/s; the quantizer's
// 10 steps at 1024 images). Then per depth (VAR-d16 / VAR-d30 at 256 px by default) and per (policy, batch) of the plan: wall time of
// one generation (median of --repeats after one warm-up), images/s with and without the VQ-VAE
// decoder, time per scale, exact KV bytes per image from the cache's ledger (peak over scales) and
// the K/V storage the device cache allocated, device memory at the generation's peak, and the GEMM
// floor (2 x per-token GEMM weights x B x 2 x L FLOP at the bf16 matmul rate measured in this run).
// Then the largest batch that fits, per policy of --largest (allocation probes: doubling, then a
// binary search to --search-step; the largest is then run once to confirm it).
//
// With --peer FILE (bench/peers/var_torch_peer.py's JSON from the same machine and call) it prints
// the targets side by side: best images/s against the peer's best, full cache at the peer's
// batches, and the batches each side fits.
//
//   varkv_bench_e2e_generation --out e2e.json [--peer var_torch_peer.json] [--depths 16,30] [--quick]
//
// Timing does not depend on weight values; the random model follows VarModel::random (official
// init) and VqVae::random. Sampling: cfg 4, top-k 900, top-p 0.96 as the peer; the VQ-VAE decoder
// in bf16 (--decoder), as the peer's runs under autocast.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "varkv/core/cuda_check.cuh"
#include "varkv/core/error.hpp"
#include "varkv_reference/cuda/var_model_cuda.cuh"
#include "varkv_reference/cuda/vqvae_cuda.cuh"
#include "varkv_reference/tool_model.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace {

using varkv::require;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

const std::vector<int> kPatchNums256 = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) varkv::fail("CUDA error {} in {}", cudaGetErrorString(e), what);
}
void blas_ok(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) varkv::fail("cuBLAS error {} in {}", static_cast<int>(s), what);
}

// bf16 GEMM rate (8192^3, fp32 accumulation, median of 10): the ceiling the GEMM floor is stated at.
double matmul_tflops() {
  constexpr int n = 8192;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  cuda_ok(cudaMalloc(&a, std::size_t{n} * n * 2), "cudaMalloc");
  cuda_ok(cudaMalloc(&b, std::size_t{n} * n * 2), "cudaMalloc");
  cuda_ok(cudaMalloc(&c, std::size_t{n} * n * 2), "cudaMalloc");
  cuda_ok(cudaMemset(a, 0x3c, std::size_t{n} * n * 2), "cudaMemset");  // ~0.01: finite products
  cuda_ok(cudaMemset(b, 0x3c, std::size_t{n} * n * 2), "cudaMemset");
  cublasHandle_t h = nullptr;
  blas_ok(cublasCreate(&h), "cublasCreate");
  const float alpha = 1, beta = 0;
  cudaEvent_t e0, e1;
  cuda_ok(cudaEventCreate(&e0), "event");
  cuda_ok(cudaEventCreate(&e1), "event");
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    cuda_ok(cudaEventRecord(e0), "event");
    blas_ok(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, c,
                         CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
    cuda_ok(cudaEventRecord(e1), "event");
    cuda_ok(cudaEventSynchronize(e1), "event");
    float t = 0;
    cuda_ok(cudaEventElapsedTime(&t, e0, e1), "event");
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cublasDestroy(h);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * n * n * double(n) / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// ScaleKV's drafters as the published Infinity-2B 10% file has them (see shared/methods): two layers
// (the first and the one at 72% depth) draft at every scale but the last; AMS-KV's demanding layers
// are the first quarter. Random weights have no attention structure to calibrate, so the bench uses
// this pattern; the timing only depends on how many layers draft.
std::string write_profile(int depth, int scales) {
  json p;
  p["format"] = "varkv-profile/1";
  p["layers"] = depth;
  p["scales"] = scales;
  p["schedule"] = "var-256";
  const int second = static_cast<int>(std::lround(0.72 * (depth - 1)));
  json drafter = json::array(), demanding = json::array();
  for (int l = 0; l < depth; ++l) {
    json row = json::array();
    for (int s = 0; s < scales; ++s) row.push_back((l == 0 || l == second) && s + 1 < scales);
    drafter.push_back(row);
    demanding.push_back(l < (depth + 3) / 4);
  }
  p["drafter"] = drafter;
  p["demanding"] = demanding;
  const std::string path = fmt::format("/tmp/varkv_e2e_profile_d{}.json", depth);
  std::ofstream(path) << p.dump(1);
  return path;
}

struct Plan {
  std::string label;   // short name in the tables
  std::string policy;  // registry spec
  std::vector<int> batches;
};

struct Row {
  std::string label, policy;
  int batch = 0;
  std::string status = "ok";
  double wall_s = 0, gen_s = 0, decode_s = 0;
  std::vector<double> scale_s;
  std::int64_t kv_peak_bytes = 0, kv_allocated_bytes = 0, device_peak_bytes = 0;
  double gemm_floor_s = 0;
};

std::vector<int> labels_for(int B) {
  std::vector<int> l;
  for (int b = 0; b < B; ++b) l.push_back((b * 97 + 13) % 1000);
  return l;
}

Row measure(const varkv::ref::VarModelCuda& var, const varkv::ref::VqVaeCuda& vae, const Plan& plan, int B, int repeats,
            std::int64_t per_token_weights, std::int64_t L, double tflops, bool warmup = true) {
  Row row;
  row.label = plan.label;
  row.policy = plan.policy;
  row.batch = B;
  varkv::ref::GenerationRequest req;
  req.labels = labels_for(B);
  req.cfg = 4.0;
  req.top_k = 900;
  req.top_p = 0.96;
  req.seed = 1;
  req.decode = true;
  varkv::ref::CudaGenerationOptions opt;
  opt.policy = plan.policy;
  opt.download_pixels = false;
  try {
    if (warmup) (void)varkv::ref::generate_cuda(var, vae, req, opt);  // cuBLASLt heuristics, decoder scratch
    std::vector<double> wall, gen, dec;
    std::vector<std::vector<double>> scales;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = clock_type::now();
      const auto g = varkv::ref::generate_cuda(var, vae, req, opt);
      const double w = std::chrono::duration<double>(clock_type::now() - t0).count();
      wall.push_back(w);
      dec.push_back(g.result.decode_seconds);
      gen.push_back(w - g.result.decode_seconds);
      scales.push_back(g.result.scale_seconds);
      row.kv_peak_bytes = g.ledger->peak_bytes();
      row.kv_allocated_bytes = g.kv_allocated_bytes;
      row.device_peak_bytes = std::max(row.device_peak_bytes, g.device_peak_bytes);
    }
    row.wall_s = median(wall);
    row.gen_s = median(gen);
    row.decode_s = median(dec);
    for (std::size_t s = 0; s < scales.front().size(); ++s) {
      std::vector<double> v;
      for (const auto& r : scales) v.push_back(r[s]);
      row.scale_s.push_back(median(v));
    }
  } catch (const varkv::Error& e) {
    const std::string what = e.what();
    row.status = what.find("out of memory") != std::string::npos ? "oom" : "error: " + what.substr(0, 200);
    cudaGetLastError();
  }
  row.gemm_floor_s = 2.0 * double(per_token_weights) * B * 2.0 * double(L) / (tflops * 1e12);
  return row;
}

json row_json(const Row& r) {
  json j{{"label", r.label},       {"policy", r.policy},         {"batch", r.batch},
         {"status", r.status},     {"wall_s", r.wall_s},         {"gen_s", r.gen_s},
         {"decode_s", r.decode_s}, {"scale_s", r.scale_s},       {"kv_peak_bytes", r.kv_peak_bytes},
         {"kv_allocated_bytes", r.kv_allocated_bytes},           {"device_peak_bytes", r.device_peak_bytes},
         {"gemm_floor_s", r.gemm_floor_s}};
  if (r.status == "ok") {
    j["images_per_s"] = r.batch / r.wall_s;
    j["images_per_s_no_decode"] = r.batch / r.gen_s;
    j["kv_bytes_per_image"] = static_cast<double>(r.kv_peak_bytes) / r.batch;
  }
  return j;
}

void print_row(int depth, const Row& r) {
  if (r.status != "ok") {
    fmt::print("[d{}] {:<12} B={:5d}: {}\n", depth, r.label, r.batch, r.status);
    return;
  }
  fmt::print("[d{}] {:<12} B={:5d}: wall {:.3f} s ({:.1f} img/s), transformer+quantizer {:.3f} s ({:.1f} img/s), "
             "decode {:.3f} s; KV {:.2f} MB/img (peak ledger; allocated {:.2f} GB), device peak {:.2f} GB; GEMM floor "
             "{:.3f} s; per scale ms:",
             depth, r.label, r.batch, r.wall_s, r.batch / r.wall_s, r.gen_s, r.batch / r.gen_s, r.decode_s,
             r.kv_peak_bytes / 1e6 / r.batch, r.kv_allocated_bytes / 1e9, r.device_peak_bytes / 1e9, r.gemm_floor_s);
  for (double s : r.scale_s) fmt::print(" {:.1f}", s * 1e3);
  fmt::print("\n");
  std::fflush(stdout);
}

// Largest batch whose allocations fit (probe), to `step` images.
int largest_batch(const varkv::ref::VarModelCuda& var, const std::string& policy, int start, int step, int cap) {
  varkv::ref::CudaGenerationOptions opt;
  opt.policy = policy;
  int lo = 0, hi = 0;
  for (int B = start;; B *= 2) {
    if (B > cap) {
      hi = cap + 1;
      break;
    }
    if (varkv::ref::probe_cuda_generation(var, B, opt).fits) {
      lo = B;
    } else {
      hi = B;
      break;
    }
  }
  if (lo >= cap) return cap;
  if (lo == 0) {
    for (int B = start / 2; B >= 1 && lo == 0; B /= 2)
      if (varkv::ref::probe_cuda_generation(var, B, opt).fits) lo = B;
    if (lo == 0) return 0;
    hi = std::min(hi, 2 * lo);
  }
  while (hi - lo > step) {
    const int mid = lo + (hi - lo) / 2 / step * step;
    if (mid <= lo) break;
    if (varkv::ref::probe_cuda_generation(var, mid, opt).fits) lo = mid;
    else hi = mid;
  }
  return lo;
}

// The VQ-VAE alone (official 256-px shape, ch 160): decode of `B` images per precision and the
// quantizer's 10 steps at 1024 images, beside the FLOP count and the matmul rate of this run.
json vae_section(const varkv::ref::VqVae& vae_host, int B, double tflops) {
  const double flops = vae_host.decoder_flops();
  const int P = vae_host.config().patch_nums.back(), C = vae_host.config().Cvae, side = 16 * P;
  json out = json::array();
  std::vector<float> host_f(static_cast<std::size_t>(B) * C * P * P);
  for (std::size_t i = 0; i < host_f.size(); ++i) host_f[i] = static_cast<float>(std::sin(0.37 * double(i)));
  varkv::DeviceBuffer<float> f_hat(host_f), images(static_cast<std::size_t>(B) * 3 * side * side);
  fmt::print("\n[vae] decoder {:.1f} GFLOP per image (256 px, ch {})\n", flops / 1e9, vae_host.config().ch);
  for (const auto precision : {varkv::ref::DecoderPrecision::bf16, varkv::ref::DecoderPrecision::tf32,
                               varkv::ref::DecoderPrecision::fp32}) {
    const char* name = precision == varkv::ref::DecoderPrecision::bf16   ? "bf16"
                       : precision == varkv::ref::DecoderPrecision::tf32 ? "tf32"
                                                                         : "fp32";
    const varkv::ref::VqVaeCuda vae(vae_host, precision);
    vae.decode(f_hat.data(), B, images.data(), nullptr);  // warm-up: scratch, cuBLAS heuristics
    cuda_ok(cudaDeviceSynchronize(), "decode");
    const auto t0 = clock_type::now();
    vae.decode(f_hat.data(), B, images.data(), nullptr);
    cuda_ok(cudaDeviceSynchronize(), "decode");
    const double sec = std::chrono::duration<double>(clock_type::now() - t0).count();
    fmt::print("[vae] decode {} B={}: {:.3f} s ({:.1f} img/s, {:.1f} TFLOP/s of the {:.0f} bf16 matmul rate), chunk {}\n",
               name, B, sec, B / sec, flops * B / sec / 1e12, tflops, vae.decode_chunk(B));
    out.push_back({{"precision", name}, {"batch", B}, {"seconds", sec}, {"tflops", flops * B / sec / 1e12}});
  }
  const varkv::ref::VqVaeCuda vae(vae_host);
  const int Bq = 1024;
  const auto& pns = vae_host.config().patch_nums;
  varkv::DeviceBuffer<float> fq(static_cast<std::size_t>(Bq) * C * P * P), next(static_cast<std::size_t>(Bq) * P * P * C);
  varkv::DeviceBuffer<std::int32_t> tokens(std::vector<std::int32_t>(static_cast<std::size_t>(Bq) * P * P, 7));
  double sec = 0;
  for (int rep = 0; rep < 2; ++rep) {  // the first pass allocates the scratch
    cuda_ok(cudaMemset(fq.data(), 0, fq.bytes()), "cudaMemset");
    cuda_ok(cudaDeviceSynchronize(), "quantizer");
    const auto t0 = clock_type::now();
    for (std::size_t si = 0; si < pns.size(); ++si)
      vae.next_autoregressive_input(static_cast<int>(si), fq.data(), Bq, tokens.data(),
                                    si + 1 == pns.size() ? nullptr : next.data(), nullptr);
    cuda_ok(cudaDeviceSynchronize(), "quantizer");
    sec = std::chrono::duration<double>(clock_type::now() - t0).count();
  }
  fmt::print("[vae] quantizer, {} scales, B={}: {:.2f} ms\n", pns.size(), Bq, sec * 1e3);
  out.push_back({{"quantizer_batch", Bq}, {"seconds", sec}});
  return out;
}

json load_peer(const std::string& path) {
  if (path.empty()) return {};
  std::ifstream f(path);
  require(f.good(), "peer results '{}' cannot be read", path);
  try {
    return json::parse(f);
  } catch (const json::exception& e) {
    varkv::fail("peer results '{}' are not JSON: {}", path, e.what());
  }
}

void print_targets(int depth, const std::vector<Row>& rows, const std::map<std::string, int>& largest, const json& peer) {
  const std::string key = std::to_string(depth);
  if (!peer.contains("depths") || !peer["depths"].contains(key) || !peer["depths"][key].contains("rows")) {
    fmt::print("[d{}] no peer rows for this depth\n", depth);
    return;
  }
  const json& prow = peer["depths"][key]["rows"];
  double peer_best = 0, peer_best_nd = 0;
  int peer_best_b = 0;
  for (const auto& r : prow)
    if (r.value("status", "") == "ok") {
      if (r.value("images_per_s", 0.0) > peer_best) {
        peer_best = r.value("images_per_s", 0.0);
        peer_best_b = r.value("batch", 0);
      }
      peer_best_nd = std::max(peer_best_nd, r.value("images_per_s_no_decode", 0.0));
    }
  double best = 0, best_nd = 0;
  std::string best_what;
  for (const auto& r : rows)
    if (r.status == "ok") {
      if (r.batch / r.wall_s > best) {
        best = r.batch / r.wall_s;
        best_what = fmt::format("{} B={}", r.label, r.batch);
      }
      best_nd = std::max(best_nd, r.batch / r.gen_s);
    }
  fmt::print("\n[d{}] targets against the PyTorch peer of the same machine\n", depth);
  if (peer_best > 0)
    fmt::print("  best images/s with decode: varkv {:.1f} ({}) vs peer {:.1f} (B={}): {:.2f}x (target >= 1.5x)\n", best,
               best_what, peer_best, peer_best_b, best / peer_best);
  if (peer_best_nd > 0)
    fmt::print("  best images/s without decode: varkv {:.1f} vs peer {:.1f}: {:.2f}x\n", best_nd, peer_best_nd,
               best_nd / peer_best_nd);
  for (const auto& r : rows) {
    if (r.label != "full" || r.status != "ok") continue;
    for (const auto& p : prow)
      if (p.value("status", "") == "ok" && p.value("batch", 0) == r.batch)
        fmt::print("  full cache at B={}: varkv {:.3f} s vs peer {:.3f} s with decode ({:.2f}x), transformer {:.3f} vs "
                   "{:.3f} s ({:.2f}x)\n",
                   r.batch, r.wall_s, p.value("wall_s", 0.0), p.value("wall_s", 0.0) / r.wall_s, r.gen_s,
                   p.value("gen_s", 0.0), p.value("gen_s", 0.0) / r.gen_s);
  }
  if (peer["depths"][key].contains("search") && peer["depths"][key]["search"].is_object())
    fmt::print("  peer largest batch: {}\n", peer["depths"][key]["search"].dump());
  for (const auto& [label, B] : largest) fmt::print("  varkv largest batch, {}: {}\n", label, B);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"varkv end-to-end VAR generation benchmark (GPU, random weights)"};
  std::string depths_text = "16,30", out_path, peer_path;
  int repeats = 2, step = 8;
  bool quick = false;
  std::string largest_text = "all";
  std::string decoder = "bf16";
  app.add_option("--depths", depths_text, "comma list of VAR depths");
  app.add_option("--repeats", repeats, "timed runs per configuration (median)")->check(CLI::Range(1, 100));
  app.add_option("--out", out_path, "JSON results");
  app.add_option("--peer", peer_path, "bench/peers/var_torch_peer.py JSON of the same machine (targets)");
  app.add_option("--largest", largest_text,
                 "labels of the policies whose largest batch is searched, comma-separated; 'all' (default) or "
                 "'none'");
  app.add_option("--search-step", step, "largest-batch resolution in images")->check(CLI::Range(1, 1024));
  app.add_flag("--quick", quick, "fewer configurations (smoke run)");
  int vae_batch = 128;
  app.add_option("--vae-batch", vae_batch, "images of the VQ-VAE-only decode timing (0 = skip it)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--decoder", decoder, "VQ-VAE decoder precision: bf16 (as the peer under autocast), tf32, fp32")
      ->check(CLI::IsMember({"bf16", "tf32", "fp32"}));
  CLI11_PARSE(app, argc, argv);
  try {
    // Arguments first: a bad one is reported the same with or without a GPU.
    const std::vector<int> depths = varkv::ref::parse_ints("--depths", depths_text);
    for (const int d : depths) require(d >= 1 && d <= 64, "--depths: depth {} is outside 1..64", d);
    const json peer = load_peer(peer_path);
    std::string why;
    require(varkv::ref::cuda_device_available(&why), "no usable CUDA device: {}", why);
    cudaDeviceProp prop{};
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const double tflops = matmul_tflops();
    fmt::print("{} ({} SMs, {:.1f} GB); bf16 matmul 8192^3: {:.0f} TFLOP/s\n", prop.name, prop.multiProcessorCount,
               prop.totalGlobalMem / 1e9, tflops);
    json results{{"device", prop.name}, {"matmul_bf16_tflops", tflops}, {"decoder", decoder}, {"depths", json::object()}};
    if (vae_batch > 0) {
      varkv::ref::VqVaeConfig qc;
      qc.patch_nums = kPatchNums256;
      results["vae"] = vae_section(varkv::ref::VqVae::random(qc, 8), vae_batch, tflops);
    }
    for (const int depth : depths) {
      const auto cfg = varkv::ref::VarConfig::from_depth(depth, kPatchNums256);
      const auto t_init = clock_type::now();
      const auto host = varkv::ref::VarModel::random(cfg, 7);
      varkv::ref::VqVaeConfig qc;
      qc.patch_nums = kPatchNums256;
      const auto vae_host = varkv::ref::VqVae::random(qc, 8);
      const double init_s = std::chrono::duration<double>(clock_type::now() - t_init).count();
      const varkv::ref::VarModelCuda var(host);
      const varkv::ref::VqVaeCuda vae(vae_host, decoder == "bf16"   ? varkv::ref::DecoderPrecision::bf16
                                                : decoder == "tf32" ? varkv::ref::DecoderPrecision::tf32
                                                                    : varkv::ref::DecoderPrecision::fp32);
      const std::string profile = write_profile(depth, cfg.scales());
      const std::int64_t C = cfg.width, L = cfg.total_tokens();
      const std::int64_t per_token = 12 * C * C * depth + std::int64_t{cfg.vocab} * C;
      fmt::print("\n[d{}] width {}, {} heads, L = {}, per-token GEMM weights {:.1f} M; host init {:.1f} s, weights on "
                 "the device {:.2f} GB (+ VQ-VAE {:.3f} GB)\n",
                 depth, C, cfg.heads, L, per_token / 1e6, init_s, var.weight_bytes() / 1e9, vae.weight_bytes() / 1e9);
      // Batches: the peer's (equal-batch comparison) and the large ones a 10% cache allows.
      const bool big = depth >= 24;
      const int peer_b = big ? 128 : 64;
      const std::string sk = "scalekv:budget=0.1,profile=" + profile;
      std::vector<Plan> plans = {
          {"full", "full", quick ? std::vector<int>{peer_b} : std::vector<int>{64, big ? 128 : 256}},
          {"scalekv10", sk, quick ? std::vector<int>{512} : std::vector<int>{peer_b, 512, 1024}},
          {"amskv", "amskv", quick ? std::vector<int>{256} : std::vector<int>{peer_b, big ? 256 : 1024}}};
      if (!quick)
        for (const auto& [label, spec] : std::vector<std::pair<std::string, std::string>>{
                 {"amskv-prof", "amskv:profile=" + profile},
                 {"streamingllm10", "streamingllm:budget=0.1"},
                 {"h2o10", "h2o:budget=0.1"},
                 {"snapkv10", "snapkv:budget=0.1"},
                 {"pyramidkv10", "pyramidkv:budget=0.1"}})
          plans.push_back({label, spec, {peer_b}});
      std::vector<Row> rows;
      json jrows = json::array();
      for (const auto& plan : plans)
        for (const int B : plan.batches) {
          // Batches of 512 and more run for seconds: one timed run after the warm-up.
          rows.push_back(measure(var, vae, plan, B, B >= 512 ? 1 : repeats, per_token, L, tflops));
          print_row(depth, rows.back());
          jrows.push_back(row_json(rows.back()));
        }
      std::map<std::string, int> largest;
      json jlargest = json::object();
      for (const auto& plan : plans) {
        const std::string padded = "," + largest_text + ",";
        if (largest_text != "all" && padded.find("," + plan.label + ",") == std::string::npos) continue;
        const int B = largest_batch(var, plan.policy, 64, step, 8192);
        // Confirm with one real generation (one repeat, no warm-up beyond the measure's own).
        const Row r = measure(var, vae, plan, B, 1, per_token, L, tflops, /*warmup=*/false);
        print_row(depth, r);
        jrows.push_back(row_json(r));
        largest[plan.label] = r.status == "ok" ? B : -B;
        jlargest[plan.label] = {{"batch", B}, {"confirmed", r.status == "ok"}, {"step", step}};
        fmt::print("[d{}] largest batch that fits, {}: {} ({})\n", depth, plan.label, B,
                   r.status == "ok" ? "confirmed by a generation" : "NOT confirmed: " + r.status);
      }
      results["depths"][std::to_string(depth)] = {{"rows", jrows}, {"largest", jlargest}, {"per_token_weights", per_token},
                                                  {"L", L}, {"host_init_s", init_s},
                                                  {"weight_bytes", var.weight_bytes()}};
      if (!peer.is_null()) print_targets(depth, rows, largest, peer);
      if (!out_path.empty()) std::ofstream(out_path) << results.dump(1);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "varkv_bench_e2e_generation: {}\n", e.what());
    return 1;
  }
}
