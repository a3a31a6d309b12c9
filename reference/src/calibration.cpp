#include "varkv_reference/calibration.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "varkv/core/error.hpp"
#include "varkv_reference/image_io.hpp"


namespace varkv::ref {

static_assert(ObservingCache<CalibratingCache>, "CalibratingCache must be an observing generation cache");

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ceil(fraction x n), at least 1, at most n (n > 0); the small slack keeps 0.1 x 30 at 3.
std::int64_t top_count(std::int64_t n, double fraction) {
  const auto k = static_cast<std::int64_t>(std::ceil(fraction * static_cast<double>(n) - 1e-9));
  return std::clamp<std::int64_t>(k, 1, n);
}

// Indices 0..n-1 ordered by value ascending, ties to the lower index.
std::vector<int> ascending_order(const std::vector<double>& values) {
  std::vector<int> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return values[a] < values[b]; });
  return order;
}

}  // namespace

// ---------------------------------------------------------------- rules

int CalibrationRules::drafters(int layers) const {
  if (drafters_per_scale != 0) return drafters_per_scale;
  return std::max(1, static_cast<int>(std::lround(layers / 8.0)));
}

int CalibrationRules::demanding(int layers) const {
  return std::max(1, static_cast<int>(std::lround(demanding_fraction * layers)));
}

void CalibrationRules::validate(int layers, int scales) const {
  require(layers > 0 && scales > 0, "calibration: layers ({}) and scales ({}) must be positive", layers, scales);
  require(drafters_per_scale >= 0 && drafters_per_scale <= layers,
          "calibration rule --drafters {}: expected 1..{} (the model's layers), or 0 for the default", drafters_per_scale,
          layers);
  require(std::isfinite(demanding_fraction) && demanding_fraction > 0 && demanding_fraction <= 1,
          "calibration rule --demanding {}: expected a fraction of the layers in (0, 1]", demanding_fraction);
  require(scales >= 2, "calibration: the schedule has {} scale; inter-scale similarity needs at least 2", scales);
  require(similarity_from >= 1 && similarity_from < scales,
          "calibration rule --similarity-from {}: expected a scale index in 1..{}", similarity_from, scales - 1);
  require(std::isfinite(history_top_fraction) && history_top_fraction > 0 && history_top_fraction <= 1,
          "calibration rule history_top_fraction {}: expected a fraction in (0, 1]", history_top_fraction);
}

// ---------------------------------------------------------------- per-row measures

RowSelectivity row_selectivity(std::span<const float> history, double current_mass, double history_top_fraction) {
  require(std::isfinite(history_top_fraction) && history_top_fraction > 0 && history_top_fraction <= 1,
          "selectivity: history_top_fraction {} is not in (0, 1]", history_top_fraction);
  require(std::isfinite(current_mass) && current_mass >= 0, "selectivity: current-map mass {} is not finite and >= 0",
          current_mass);
  std::vector<double> h(history.begin(), history.end());
  double hist = 0;
  for (std::size_t j = 0; j < h.size(); ++j) {
    require(std::isfinite(h[j]) && h[j] >= 0, "selectivity: history key {} has mass {} (expected finite, >= 0)", j, h[j]);
    hist += h[j];
  }
  const double total = hist + current_mass;
  require(total > 0, "selectivity: the row has no attention mass at all");
  RowSelectivity r;
  if (h.empty() || hist <= 0) return r;  // h = 0, c = 1, ASI = 1
  const auto k = top_count(static_cast<std::int64_t>(h.size()), history_top_fraction);
  std::nth_element(h.begin(), h.begin() + (k - 1), h.end(), std::greater<>());
  double top = 0;
  for (std::int64_t j = 0; j < k; ++j) top += h[j];
  r.history_mass = std::min(1.0, hist / total);
  r.concentration = std::min(1.0, top / hist);
  r.asi = std::clamp((1.0 - r.history_mass) + r.history_mass * r.concentration, 0.0, 1.0);
  return r;
}

std::vector<double> resample_token_map(std::span<const float> map, int in_h, int in_w, int dim, int out_h, int out_w) {
  require(in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0 && dim > 0,
          "resample: sizes {}x{} -> {}x{} and dim {} must be positive", in_h, in_w, out_h, out_w, dim);
  require(map.size() == static_cast<std::size_t>(in_h) * in_w * dim, "resample: map has {} values, expected [{}, {}, {}]",
          map.size(), in_h, in_w, dim);
  // PyTorch upsample_bilinear2d, align_corners=False: src = (dst + 0.5) in / out - 0.5, clamped at 0.
  struct Tap {
    int i0, i1;
    double l1;
  };
  const auto taps = [](int in, int out) {
    std::vector<Tap> t(static_cast<std::size_t>(out));
    const double scale = static_cast<double>(in) / out;
    for (int o = 0; o < out; ++o) {
      const double src = std::max(0.0, (o + 0.5) * scale - 0.5);
      const int i0 = std::min(static_cast<int>(src), in - 1);
      t[o] = {i0, std::min(i0 + 1, in - 1), src - i0};
    }
    return t;
  };
  const auto ty = taps(in_h, out_h), tx = taps(in_w, out_w);
  std::vector<double> out(static_cast<std::size_t>(out_h) * out_w * dim);
  const auto at = [&](int y, int x, int c) { return static_cast<double>(map[(std::size_t(y) * in_w + x) * dim + c]); };
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < dim; ++c) {
        const Tap& a = ty[y];
        const Tap& b = tx[x];
        const double top = (1 - b.l1) * at(a.i0, b.i0, c) + b.l1 * at(a.i0, b.i1, c);
        const double bottom = (1 - b.l1) * at(a.i1, b.i0, c) + b.l1 * at(a.i1, b.i1, c);
        out[(std::size_t(y) * out_w + x) * dim + c] = (1 - a.l1) * top + a.l1 * bottom;
      }
  return out;
}

double mean_token_cosine(std::span<const float> a, std::span<const double> b, std::int64_t tokens, int dim) {
  require(tokens > 0 && dim > 0, "cosine: tokens ({}) and dim ({}) must be positive", tokens, dim);
  const auto n = static_cast<std::size_t>(tokens * dim);
  require(a.size() == n && b.size() == n, "cosine: maps of {} and {} values, expected {} x {}", a.size(), b.size(), tokens,
          dim);
  double sum = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    double dot = 0, na = 0, nb = 0;
    for (int c = 0; c < dim; ++c) {
      const double x = a[std::size_t(t) * dim + c], y = b[std::size_t(t) * dim + c];
      dot += x * y;
      na += x * x;
      nb += y * y;
    }
    if (na > 0 && nb > 0) sum += std::clamp(dot / std::sqrt(na * nb), -1.0, 1.0);
  }
  return sum / static_cast<double>(tokens);
}

// ---------------------------------------------------------------- accumulator

CalibrationAccumulator::CalibrationAccumulator(int layers, ScaleSchedule schedule, double history_top_fraction)
    : layers_(layers), schedule_(std::move(schedule)), top_fraction_(history_top_fraction) {
  require(layers > 0, "calibration accumulator: layers must be positive, got {}", layers);
  require(std::isfinite(history_top_fraction) && history_top_fraction > 0 && history_top_fraction <= 1,
          "calibration accumulator: history_top_fraction {} is not in (0, 1]", history_top_fraction);
  const auto cells = static_cast<std::size_t>(layers) * schedule_.size();
  for (auto* v : {&asi_, &hist_, &conc_, &cos_k_, &cos_v_}) v->assign(cells, 0.0);
  sel_rows_.assign(cells, 0);
  sim_rows_.assign(cells, 0);
}

std::size_t CalibrationAccumulator::index(int layer, int scale) const {
  require(layer >= 0 && layer < layers_, "calibration: layer {} outside 0..{}", layer, layers_ - 1);
  require(scale >= 0 && scale < schedule_.size(), "calibration: step {} outside schedule '{}' ({} scales)", scale,
          schedule_.name(), schedule_.size());
  return static_cast<std::size_t>(layer) * schedule_.size() + scale;
}

void CalibrationAccumulator::add_selectivity(int step, int layer, TensorView<const float, 3> key_stat,
                                             TensorView<const std::int32_t, 3> positions,
                                             std::span<const std::int32_t> lengths) {
  const std::size_t at = index(layer, step);
  const std::int64_t N = positions.shape(0), H = positions.shape(1), cap = positions.shape(2);
  const std::int64_t n = schedule_.tokens(step), begin = schedule_.begin(step);
  expect_shape("key_stat (calibration)", key_stat, {N, H, cap + n});
  require(static_cast<std::int64_t>(lengths.size()) == N * H, "calibration: {} cache lengths, expected {} (rows)",
          lengths.size(), N * H);
  std::vector<float> history;
  double asi = 0, hist = 0, conc = 0;
  for (std::int64_t b = 0; b < N; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int32_t len = lengths[b * H + h];
      require(len >= 0 && len <= cap, "calibration: row (seq {}, head {}) length {} outside 0..{}", b, h, len, cap);
      history.clear();
      double current = 0, total = 0;
      for (std::int32_t j = 0; j < len; ++j) {
        const std::int32_t p = positions(b, h, j);
        require(p >= 0 && p < begin,
                "calibration: layer {} cache slot {} of (seq {}, head {}) holds position {}, not one of the scales before "
                "step {} (which begins at {})",
                layer, j, b, h, p, step, begin);
        history.push_back(key_stat(b, h, j));
        total += key_stat(b, h, j);
      }
      for (std::int64_t i = 0; i < n; ++i) current += key_stat(b, h, cap + i);
      total += current;
      require(std::abs(total - static_cast<double>(n)) <= 1e-3 * static_cast<double>(n),
              "calibration: key_stat of step {}, layer {}, (seq {}, head {}) sums to {}; the probability mass of the "
              "step's {} queries must sum to {}",
              step, layer, b, h, total, n, n);
      const RowSelectivity r = row_selectivity(history, current, top_fraction_);
      asi += r.asi;
      hist += r.history_mass;
      conc += r.concentration;
    }
  asi_[at] += asi;
  hist_[at] += hist;
  conc_[at] += conc;
  sel_rows_[at] += N * H;
}

void CalibrationAccumulator::add_similarity(int step, int layer, TensorView<const float, 4> prev_k,
                                            TensorView<const float, 4> prev_v, TensorView<const float, 4> k,
                                            TensorView<const float, 4> v) {
  const std::size_t at = index(layer, step);
  require(step >= 1, "calibration: similarity needs a previous scale; step {} has none", step);
  const Scale cur = schedule_.scale(step), prev = schedule_.scale(step - 1);
  const std::int64_t N = k.shape(0), H = k.shape(1), d = k.shape(3);
  expect_shape("k (calibration)", k, {N, H, cur.tokens(), d});
  expect_shape("v (calibration)", v, {N, H, cur.tokens(), d});
  expect_shape("previous k (calibration)", prev_k, {N, H, prev.tokens(), d});
  expect_shape("previous v (calibration)", prev_v, {N, H, prev.tokens(), d});
  std::vector<float> a(static_cast<std::size_t>(cur.tokens() * d)), p(static_cast<std::size_t>(prev.tokens() * d));
  double sum_k = 0, sum_v = 0;
  for (std::int64_t b = 0; b < N; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (int which = 0; which < 2; ++which) {
        const auto& x = which == 0 ? k : v;
        const auto& y = which == 0 ? prev_k : prev_v;
        for (std::int64_t t = 0; t < cur.tokens(); ++t)
          for (std::int64_t c = 0; c < d; ++c) a[std::size_t(t * d + c)] = x(b, h, t, c);
        for (std::int64_t t = 0; t < prev.tokens(); ++t)
          for (std::int64_t c = 0; c < d; ++c) p[std::size_t(t * d + c)] = y(b, h, t, c);
        const auto up = resample_token_map(p, prev.h, prev.w, static_cast<int>(d), cur.h, cur.w);
        (which == 0 ? sum_k : sum_v) += mean_token_cosine(a, up, cur.tokens(), static_cast<int>(d));
      }
  cos_k_[at] += sum_k;
  cos_v_[at] += sum_v;
  sim_rows_[at] += N * H;
}

CalibrationTables CalibrationAccumulator::tables(int similarity_from) const {
  const int S = schedule_.size();
  require(similarity_from >= 1 && similarity_from < S, "calibration: similarity_from {} outside 1..{}", similarity_from,
          S - 1);
  CalibrationTables t;
  t.layers = layers_;
  t.scales = S;
  const auto cells = static_cast<std::size_t>(layers_) * S;
  for (auto* v : {&t.selectivity, &t.history_mass, &t.concentration}) v->assign(cells, 0.0);
  for (auto* v : {&t.similarity, &t.similarity_k, &t.similarity_v}) v->assign(cells, kNaN);
  t.similarity_mean.assign(static_cast<std::size_t>(layers_), 0.0);
  for (int l = 0; l < layers_; ++l) {
    double mean = 0;
    for (int s = 0; s < S; ++s) {
      const std::size_t i = index(l, s);
      require(sel_rows_[i] > 0, "calibration: no selectivity measured at layer {}, scale {}", l, s);
      const auto rows = static_cast<double>(sel_rows_[i]);
      t.selectivity[i] = asi_[i] / rows;
      t.history_mass[i] = hist_[i] / rows;
      t.concentration[i] = conc_[i] / rows;
      if (s == 0) continue;
      require(sim_rows_[i] > 0, "calibration: no similarity measured at layer {}, scale {}", l, s);
      const auto srows = static_cast<double>(sim_rows_[i]);
      t.similarity_k[i] = cos_k_[i] / srows;
      t.similarity_v[i] = cos_v_[i] / srows;
      t.similarity[i] = 0.5 * (t.similarity_k[i] + t.similarity_v[i]);
      if (s >= similarity_from) mean += t.similarity[i];
    }
    t.similarity_mean[static_cast<std::size_t>(l)] = mean / (S - similarity_from);
  }
  return t;
}

// ---------------------------------------------------------------- the cache

CalibratingCache::CalibratingCache(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch,
                                   CalibrationAccumulator& accumulator)
    : full_(geometry, schedule, batch, {DType::fp32, DType::fp32}), acc_(&accumulator) {
  require(accumulator.layers() == geometry.layers, "calibrating cache: accumulator has {} layers, the model {}",
          accumulator.layers(), geometry.layers);
  require(accumulator.schedule().scales() == schedule.scales(),
          "calibrating cache: accumulator's schedule '{}' differs from the cache's '{}'", accumulator.schedule().name(),
          schedule.name());
  prev_k_.resize(static_cast<std::size_t>(geometry.layers));
  prev_v_.resize(static_cast<std::size_t>(geometry.layers));
  last_step_.assign(static_cast<std::size_t>(geometry.layers), -1);
}

StatRequest CalibratingCache::statistics(int step, int layer) const {
  (void)layer;
  StatRequest r;
  r.needed = true;
  r.statistic = KeyStatistic::probability_mass;
  const auto n = static_cast<std::int32_t>(full_.schedule().tokens(step));
  r.observers.resize(static_cast<std::size_t>(n));
  std::iota(r.observers.begin(), r.observers.end(), 0);
  return r;
}

void CalibratingCache::commit(int step, int l, TensorView<const float, 4> k, TensorView<const float, 4> v,
                              TensorView<const float, 3> key_stat) {
  const auto& store = full_.layer(l);  // checks l
  const auto li = static_cast<std::size_t>(l);
  require(last_step_[li] == step - 1, "calibrating cache: layer {} got step {} after step {}; commit steps in order", l,
          step, last_step_[li]);
  const std::int64_t N = full_.batch().sequences(), H = full_.geometry().heads, d = full_.geometry().head_dim;
  const std::int64_t n = full_.schedule().tokens(step);
  expect_shape("k (calibrating commit)", k, {N, H, n, d});
  expect_shape("v (calibrating commit)", v, {N, H, n, d});
  acc_->add_selectivity(step, l, key_stat, store.positions(), store.lengths());
  if (step >= 1) {
    const std::int64_t pn = full_.schedule().tokens(step - 1);
    const auto pk = make_view<4>("previous k", prev_k_[li].data(), {N, H, pn, d});
    const auto pv = make_view<4>("previous v", prev_v_[li].data(), {N, H, pn, d});
    acc_->add_similarity(step, l, pk, pv, k, v);
  }
  auto& pk = prev_k_[li];
  auto& pv = prev_v_[li];
  pk.resize(static_cast<std::size_t>(N * H * n * d));
  pv.resize(pk.size());
  std::size_t o = 0;
  for (std::int64_t b = 0; b < N; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t c = 0; c < d; ++c, ++o) {
          pk[o] = k(b, h, i, c);
          pv[o] = v(b, h, i, c);
        }
  full_.commit(step, l, k, v);
  last_step_[li] = step;
}

void CalibratingCache::commit(int step, int l, TensorView<const float, 4>, TensorView<const float, 4>) {
  fail("calibrating cache: step {}, layer {} committed without key statistics; calibration measures every step", step, l);
}

// ---------------------------------------------------------------- classification and the driver

Classification classify(const CalibrationTables& t, const CalibrationRules& rules) {
  rules.validate(t.layers, t.scales);
  const int L = t.layers, S = t.scales;
  require(t.selectivity.size() == static_cast<std::size_t>(L) * S && t.similarity_mean.size() == static_cast<std::size_t>(L),
          "classify: tables of {} selectivity and {} similarity entries, expected {} x {} and {}", t.selectivity.size(),
          t.similarity_mean.size(), L, S, L);
  Classification c;
  c.drafters_per_scale = rules.drafters(L);
  c.demanding_layers = rules.demanding(L);
  c.drafter.assign(static_cast<std::size_t>(L) * S, 0);
  c.demanding.assign(static_cast<std::size_t>(L), 0);
  for (int l = 0; l < L; ++l) c.drafter[std::size_t(l) * S] = 1;  // scale 0: nothing to compress
  for (int s = 1; s < S; ++s) {
    std::vector<double> asi(static_cast<std::size_t>(L));
    for (int l = 0; l < L; ++l) {
      asi[l] = t.at(t.selectivity, l, s);
      require(!std::isnan(asi[l]), "classify: selectivity of layer {}, scale {} is NaN", l, s);
    }
    const auto order = ascending_order(asi);
    for (int i = 0; i < c.drafters_per_scale; ++i) c.drafter[std::size_t(order[i]) * S + s] = 1;
  }
  for (int l = 0; l < L; ++l)
    require(!std::isnan(t.similarity_mean[l]), "classify: similarity_mean of layer {} is NaN", l);
  const auto order = ascending_order(t.similarity_mean);
  for (int i = 0; i < c.demanding_layers; ++i) c.demanding[static_cast<std::size_t>(order[i])] = 1;
  return c;
}

CalibrationProfile calibrate(const VarModel& var, const VqVae& vae, const CalibrationRequest& request,
                             const CalibrationProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const VarConfig& cfg = var.config();
  const ScaleSchedule schedule = cfg.schedule();
  request.rules.validate(cfg.depth, cfg.scales());
  require(!request.classes.empty(), "calibration: no classes given");
  require(!request.seeds.empty(), "calibration: no seeds given (each seed is one run)");
  for (int c : request.classes)
    require(c >= 0 && c < cfg.num_classes, "calibration: class {} outside 0..{}", c, cfg.num_classes - 1);

  CalibrationAccumulator acc(cfg.depth, schedule, request.rules.history_top_fraction);
  const BatchShape batch{static_cast<int>(request.classes.size()), true};
  const int runs = static_cast<int>(request.seeds.size());
  for (int r = 0; r < runs; ++r) {
    CalibratingCache cache(cfg.geometry(), schedule, batch, acc);
    GenerationRequest g;
    g.labels = request.classes;
    g.cfg = request.cfg;
    g.top_k = request.top_k;
    g.top_p = request.top_p;
    g.seed = request.seeds[r];
    g.decode = false;
    ProgressFn each;
    if (progress) each = [&](const ScaleProgress& p) { progress({r, runs, request.seeds[r], p}); };
    (void)generate(var, vae, cache, g, each);
  }

  CalibrationProfile p;
  p.schedule = schedule.name();
  p.model.depth = cfg.depth;
  p.model.width = cfg.width;
  p.model.heads = cfg.heads;
  p.model.head_dim = cfg.head_dim();
  p.model.vae_ch = vae.config().ch;
  p.model.patch_nums = cfg.patch_nums;
  p.request = request;
  p.runs = runs;
  p.sequences_per_run = batch.sequences();
  p.tables = acc.tables(request.rules.similarity_from);
  p.classes = classify(p.tables, request.rules);
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

// ---------------------------------------------------------------- outputs

namespace {

nlohmann::ordered_json table_json(const CalibrationTables& t, const std::vector<double>& v) {
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (int l = 0; l < t.layers; ++l) {
    nlohmann::ordered_json row = nlohmann::ordered_json::array();
    for (int s = 0; s < t.scales; ++s) {
      const double x = t.at(v, l, s);
      row.push_back(std::isnan(x) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(x));
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

nlohmann::ordered_json profile_to_json(const CalibrationProfile& p) {
  using json = nlohmann::ordered_json;
  const int L = p.layers(), S = p.scales();
  json drafter = json::array(), demanding = json::array();
  for (int l = 0; l < L; ++l) {
    json row = json::array();
    for (int s = 0; s < S; ++s) row.push_back(p.drafter(l, s));
    drafter.push_back(row);
    demanding.push_back(p.demanding(l));
  }
  const bool random = p.model.var_path.empty() && p.model.vae_path.empty();
  json model = {{"depth", p.model.depth},
                {"width", p.model.width},
                {"heads", p.model.heads},
                {"head_dim", p.model.head_dim},
                {"vae_ch", p.model.vae_ch},
                {"patch_nums", p.model.patch_nums},
                {"weights", random ? json("random-init") : json({{"var", p.model.var_path}, {"vae", p.model.vae_path}})}};
  if (random) model["init_seed"] = p.model.init_seed;
  const CalibrationRules& r = p.request.rules;
  return json{{"format", "varkv-profile/1"},
              {"layers", L},
              {"scales", S},
              {"schedule", p.schedule},
              {"model", model},
              {"calibration",
               {{"classes", p.request.classes},
                {"seeds", p.request.seeds},
                {"cfg", p.request.cfg},
                {"top_k", p.request.top_k},
                {"top_p", p.request.top_p},
                {"runs", p.runs},
                {"sequences_per_run", p.sequences_per_run},
                {"statistic", "probability_mass"},
                {"observers", "all"},
                {"seconds", p.seconds}}},
              {"drafter", drafter},
              {"demanding", demanding},
              {"rules",
               {{"drafters_per_scale", p.classes.drafters_per_scale},
                {"demanding_fraction", r.demanding_fraction},
                {"demanding_layers", p.classes.demanding_layers},
                {"similarity_from", r.similarity_from},
                {"history_top_fraction", r.history_top_fraction},
                {"resampling", "bilinear-align_corners=False"}}},
              {"selectivity", table_json(p.tables, p.tables.selectivity)},
              {"history_mass", table_json(p.tables, p.tables.history_mass)},
              {"concentration", table_json(p.tables, p.tables.concentration)},
              {"similarity", table_json(p.tables, p.tables.similarity)},
              {"similarity_k", table_json(p.tables, p.tables.similarity_k)},
              {"similarity_v", table_json(p.tables, p.tables.similarity_v)},
              {"similarity_mean", p.tables.similarity_mean}};
}

void write_profile_json(const std::string& path, const CalibrationProfile& profile) {
  // One top-level entry per line and one table row per line (nlohmann's indented dump would put
  // every number on its own line).
  const auto j = profile_to_json(profile);
  std::string text = "{";
  bool first = true;
  for (const auto& [key, value] : j.items()) {
    text += first ? "\n " : ",\n ";
    first = false;
    text += nlohmann::ordered_json(key).dump() + ": ";
    if (value.is_array() && !value.empty() && value.front().is_array()) {
      text += "[";
      for (std::size_t r = 0; r < value.size(); ++r) text += (r ? ",\n  " : "\n  ") + value[r].dump();
      text += "]";
    } else {
      text += value.dump();
    }
  }
  text += "\n}\n";
  std::ofstream f(path);
  require(f.good(), "cannot write profile '{}'", path);
  f << text;
  f.close();
  require(!f.fail(), "cannot write profile '{}'", path);
}

std::string format_profile_table(const CalibrationProfile& p) {
  const int L = p.layers(), S = p.scales();
  const auto& sides = p.model.patch_nums;
  const auto side = [&](int s) {
    return s < static_cast<int>(sides.size()) ? fmt::format("{0}x{0}", sides[s]) : fmt::format("s{}", s);
  };
  std::string out;
  out += fmt::format("ScaleKV attention selectivity index (ASI) per layer and scale; * = drafter ({} per scale from "
                     "scale 1, all layers at scale 0)\n",
                     p.classes.drafters_per_scale);
  out += fmt::format("{:>5} ", "layer");
  for (int s = 0; s < S; ++s) out += fmt::format("{:>7} ", side(s));
  out += "\n";
  for (int l = 0; l < L; ++l) {
    out += fmt::format("{:>5} ", l);
    for (int s = 0; s < S; ++s)
      out += fmt::format("{:>6.3f}{}", p.tables.at(p.tables.selectivity, l, s), p.drafter(l, s) ? "* " : "  ");
    out += "\n";
  }
  out += fmt::format("\nAMS-KV inter-scale K/V similarity (cosine vs the previous scale, bilinear) per layer and scale; "
                     "mean over scales >= {}; D = cache-demanding ({} of {} layers)\n",
                     p.request.rules.similarity_from, p.classes.demanding_layers, L);
  out += fmt::format("{:>5} ", "layer");
  for (int s = 0; s < S; ++s) out += fmt::format("{:>7} ", side(s));
  out += "|    mean\n";
  for (int l = 0; l < L; ++l) {
    out += fmt::format("{:>5} ", l);
    for (int s = 0; s < S; ++s) {
      const double x = p.tables.at(p.tables.similarity, l, s);
      out += std::isnan(x) ? fmt::format("{:>7} ", "-") : fmt::format("{:>7.3f} ", x);
    }
    out += fmt::format("| {:>7.3f}{}\n", p.tables.similarity_mean[l], p.demanding(l) ? " D" : "");
  }
  return out;
}

// ---------------------------------------------------------------- the picture

std::array<std::uint8_t, 3> heat_colour(double t) {
  // Viridis sampled at 0, 0.25, 0.5, 0.75, 1, linearly interpolated.
  static constexpr double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  if (!(t >= 0)) t = 0;  // NaN -> 0
  t = std::min(t, 1.0) * 4.0;
  const int i = std::min(static_cast<int>(t), 3);
  const double f = t - i;
  std::array<std::uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k) c[k] = static_cast<std::uint8_t>(std::lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k])));
  return c;
}

namespace {

using Colour = std::array<std::uint8_t, 3>;
constexpr Colour kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrey{150, 150, 150};

struct Canvas {
  int w, h;
  std::vector<std::uint8_t> rgb;
  Canvas(int width, int height) : w(width), h(height), rgb(static_cast<std::size_t>(width) * height * 3, 255) {}
  void fill(int x0, int y0, int x1, int y1, Colour c) {  // [x0, x1) x [y0, y1), clipped
    x0 = std::max(x0, 0), y0 = std::max(y0, 0), x1 = std::min(x1, w), y1 = std::min(y1, h);
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) std::copy(c.begin(), c.end(), rgb.begin() + (std::ptrdiff_t(y) * w + x) * 3);
  }
  void outline(int x, int y, int ww, int hh, int t, Colour c) {
    fill(x, y, x + ww, y + t, c);
    fill(x, y + hh - t, x + ww, y + hh, c);
    fill(x, y, x + t, y + hh, c);
    fill(x + ww - t, y, x + ww, y + hh, c);
  }
  void text(int x, int y, const std::string& s, int scale, Colour c) {
    for (const PixelRect& r : text_rects(s, scale)) fill(x + r.x0, y + r.y0, x + r.x1, y + r.y1, c);
  }
  static int text_width(const std::string& s, int scale) { return ref::text_width(s, scale); }
};

}  // namespace

ProfileImage render_profile_image(const CalibrationProfile& p) {
  const int L = p.layers(), S = p.scales();
  require(L > 0 && S > 0 && p.tables.selectivity.size() == std::size_t(L) * S &&
              p.classes.drafter.size() == std::size_t(L) * S && p.classes.demanding.size() == std::size_t(L) &&
              p.tables.similarity_mean.size() == std::size_t(L),
          "profile image: tables do not match {} layers x {} scales", L, S);
  const int margin = 16, label_w = 44, cell_w = 44, cell_h = std::clamp(560 / L, 16, 32);
  const int title_h = 34, bar_panel = 260, gap = 56, value_w = 60;
  const std::string heat_title = "ASI (ScaleKV)", bar_title = "similarity (AMS-KV)";
  const std::string legend1 = fmt::format(
      "rows: layers 0..{}; columns: scales (token map side); colour: ASI, low = attention spread over many scales", L - 1);
  const std::string legend2 =
      fmt::format("red outline: drafter (ScaleKV).  bars: mean K/V cosine to the previous scale over scales >= {}; "
                  "red: cache-demanding (AMS-KV), blue: cache-efficient",
                  p.request.rules.similarity_from);
  ProfileImage img;
  img.layers = L;
  img.scales = S;
  img.heat_origin = {margin + label_w, margin + title_h, cell_w, cell_h};
  const int heat_w = S * cell_w, heat_h = L * cell_h;
  const int bar_x = std::max(img.heat_origin.x + heat_w + gap, margin + Canvas::text_width(heat_title, 2) + gap);
  const int below = img.heat_origin.y + heat_h;
  img.width = std::max({bar_x + std::max(bar_panel + value_w, Canvas::text_width(bar_title, 2)) + margin,
                        2 * margin + Canvas::text_width(legend1, 1), 2 * margin + Canvas::text_width(legend2, 1)});
  img.height = below + 24 + 16 + 20 + 34 + margin;
  Canvas cv(img.width, img.height);

  // Heatmap of ASI.
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : p.tables.selectivity) lo = std::min(lo, v), hi = std::max(hi, v);
  img.heat_lo = lo;
  img.heat_hi = hi;
  const auto norm = [&](double v) { return hi - lo > 1e-12 ? (v - lo) / (hi - lo) : 1.0; };
  cv.text(margin, margin, heat_title, 2, kBlack);
  for (int l = 0; l < L; ++l) {
    const std::string t = std::to_string(l);
    cv.text(img.heat_origin.x - 8 - Canvas::text_width(t, 2), img.heat_origin.y + l * cell_h + (cell_h - 14) / 2, t, 2,
            kBlack);
    for (int s = 0; s < S; ++s) {
      const auto c = img.cell(l, s);
      cv.fill(c.x + 1, c.y + 1, c.x + c.w - 1, c.y + c.h - 1, heat_colour(norm(p.tables.at(p.tables.selectivity, l, s))));
      if (p.drafter(l, s)) cv.outline(c.x + 1, c.y + 1, c.w - 2, c.h - 2, 3, kMarkColour);
    }
  }
  for (int s = 0; s < S; ++s) {
    const std::string t = s < static_cast<int>(p.model.patch_nums.size()) ? std::to_string(p.model.patch_nums[s])
                                                                          : std::to_string(s);
    cv.text(img.heat_origin.x + s * cell_w + (cell_w - Canvas::text_width(t, 2)) / 2, below + 6, t, 2, kBlack);
  }
  cv.text(margin, below + 8, "side", 1, kGrey);
  // Colour bar with its range.
  const int cb_y = below + 28;
  for (int x = 0; x < heat_w; ++x)
    cv.fill(img.heat_origin.x + x, cb_y, img.heat_origin.x + x + 1, cb_y + 12, heat_colour(x / double(std::max(1, heat_w - 1))));
  cv.text(img.heat_origin.x, cb_y + 16, fmt::format("ASI {:.3f}", lo), 1, kBlack);
  const std::string hi_text = fmt::format("{:.3f}", hi);
  cv.text(img.heat_origin.x + heat_w - Canvas::text_width(hi_text, 1), cb_y + 16, hi_text, 1, kBlack);

  // Bars of similarity_mean on an axis [min(0, lowest), 1].
  double slo = 0;
  for (double v : p.tables.similarity_mean) slo = std::min(slo, v);
  img.bar_unit = bar_panel / (1.0 - slo);
  img.bar_zero_x = bar_x + static_cast<int>(std::lround(-slo * img.bar_unit));
  cv.text(bar_x, margin, bar_title, 2, kBlack);
  img.bars.resize(static_cast<std::size_t>(L));
  for (int l = 0; l < L; ++l) {
    const double v = std::clamp(p.tables.similarity_mean[l], slo, 1.0);
    const int end = img.bar_zero_x + static_cast<int>(std::lround(v * img.bar_unit));
    ProfileImage::Rect r{std::min(img.bar_zero_x, end), img.heat_origin.y + l * cell_h + 3, std::abs(end - img.bar_zero_x),
                         cell_h - 6};
    img.bars[l] = r;
    cv.fill(r.x, r.y, r.x + r.w, r.y + r.h, p.demanding(l) ? kMarkColour : kPlainBarColour);
    cv.text(bar_x + bar_panel + 8, img.heat_origin.y + l * cell_h + (cell_h - 7) / 2,
            fmt::format("{:.3f}", p.tables.similarity_mean[l]), 1, kBlack);
  }
  cv.fill(img.bar_zero_x, img.heat_origin.y - 4, img.bar_zero_x + 1, below + 4, kBlack);  // the zero line
  cv.fill(bar_x, below + 4, bar_x + bar_panel + 1, below + 5, kBlack);                     // the axis
  cv.text(img.bar_zero_x - 3, below + 8, "0", 1, kBlack);
  cv.text(bar_x + bar_panel - 3, below + 8, "1", 1, kBlack);
  if (slo < 0) cv.text(bar_x - 6, below + 8, fmt::format("{:.2f}", slo), 1, kBlack);

  cv.text(margin, img.height - margin - 22, legend1, 1, kBlack);
  cv.text(margin, img.height - margin - 8, legend2, 1, kBlack);
  img.rgb = std::move(cv.rgb);
  return img;
}

void write_profile_png(const std::string& path, const CalibrationProfile& profile) {
  const ProfileImage img = render_profile_image(profile);
  // image_io's writer takes [1, 3, H, W] in [0, 1]; c / 255 converts back to c exactly.
  const std::size_t plane = static_cast<std::size_t>(img.width) * img.height;
  std::vector<float> planes(plane * 3);
  for (std::size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) planes[c * plane + i] = img.rgb[i * 3 + c] / 255.0f;
  write_png(path, planes, 1, img.height, img.width, 0);
}

}  // namespace varkv::ref
