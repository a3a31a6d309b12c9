#pragma once
//! \file
//! Calibration of the layer-classification policies: runs the reference VAR model, measures per
//! layer and scale ScaleKV's attention selectivity and AMS-KV's inter-scale K/V similarity, classifies
//! the layers and writes the JSON profile that `varkv::classification::load_profile` reads.
//!
//! \par Overview
//! `CalibratingCache` is a generation cache (see generate.hpp) that keeps every token, like
//! `varkv::FullCache<float>` which it wraps, and asks the generation loop for the probability mass
//! that ALL queries of the step give to every key, at every (step, layer). Each commit hands that
//! per-key mass and the step's K/V to a `CalibrationAccumulator`, which sums the statistics below over
//! the (sequence, head) rows of every run. `calibrate` runs one generation per seed (all classes as one
//! CFG batch, no VQ-VAE decode), then `classify` applies the rules; the result is a
//! `CalibrationProfile`, written as JSON (`write_profile_json`), a table (`format_profile_table`)
//! and a PNG (`write_profile_png`).
//!
//! \par Attention Selectivity Index (ScaleKV), per (layer, scale s), in [0, 1]
//! Take one (sequence, head) row at step s and let m_j be the attention probability summed over the
//! step's n_q queries for key j (so the m_j of a row add up to n_q). History keys are the cached keys
//! of earlier scales (store positions < begin(s)); current keys are the step's own token map.
//! - history_mass  h = (sum of m_j over history keys) / n_q: the share of the step's attention that
//!   goes to earlier scales. (n_q is taken as the row's measured total, which equals n_q up to fp32
//!   rounding and is checked against it.)
//! - concentration c = (sum of the largest k history m_j) / (sum of all history m_j), with
//!   k = ceil(0.1 x number of history keys) (`history_top_fraction`): how much of the history
//!   attention the top tenth of the history keys carries. c = 1 when there is no history mass.
//! - ASI = (1 - h) + h c: the share of the step's attention that a cache holding only the current map
//!   and the top tenth of the history would still capture.
//! A layer whose attention is spread over many keys of many scales has a low ASI: it is a drafter
//! (needs a large cache); a layer that looks mostly at the current map, or at a few history keys, has
//! an ASI near 1: a refiner. Step 0 has no history: h = 0, c = 1, ASI = 1 (and at step 1 the single
//! history key is its own top tenth, so ASI = 1 there too). The tables hold the mean over all rows
//! (the 2B sequences of a CFG batch, conditional and null-class, x heads) and runs of ASI, h and c,
//! each averaged on its own (so mean ASI is not exactly 1 - mean h + mean h x mean c).
//!
//! \par Inter-scale K/V similarity (AMS-KV), per (layer, scale s >= 1), in [-1, 1]
//! For one (sequence, head) row, the previous scale's key map [h_{s-1} x w_{s-1}, d] is resampled to
//! h_s x w_s per channel, bilinearly with PyTorch's `align_corners=False` rule (source coordinate
//! (dst + 0.5) in / out - 0.5, clamped to >= 0, neighbours clamped to the border); the cosine
//! similarity between each token's key and the resampled key at the same place is averaged over the
//! h_s w_s tokens (a zero vector has cosine 0). The same is done for the values. similarity_k and
//! similarity_v are the means over rows and runs; similarity = (similarity_k + similarity_v) / 2.
//! Scale 0 has no previous scale: NaN in the tables, `null` in the JSON. A layer's summary,
//! similarity_mean, is the mean of similarity over the scales s >= `similarity_from` (default 2).
//!
//! \par Classification rules (`CalibrationRules`)
//! - ScaleKV: at each scale s >= 1 the `drafters_per_scale` layers (default max(1, round(L / 8)))
//!   with the lowest ASI are drafters, ties to the lower layer index; at scale 0 every layer is a
//!   drafter (a one-token cache has nothing to compress).
//! - AMS-KV: the max(1, round(demanding_fraction x L)) layers (default fraction 0.25) with the lowest
//!   similarity_mean are cache-demanding, ties to the lower layer index.
//!
//! \par Profile JSON (format "varkv-profile/1")
//! \code
//! {"format": "varkv-profile/1", "layers": L, "scales": S, "schedule": "var",
//!  "model": {"depth", "width", "heads", "head_dim", "vae_ch", "patch_nums",
//!            "weights": "random-init" or {"var": path, "vae": path}, "init_seed" (random-init only)},
//!  "calibration": {"classes", "seeds", "cfg", "top_k", "top_p", "runs", "sequences_per_run",
//!                  "statistic": "probability_mass", "observers": "all", "seconds"},
//!  "drafter": [[bool x S] x L], "demanding": [bool x L],
//!  "rules": {"drafters_per_scale", "demanding_fraction", "demanding_layers", "similarity_from",
//!            "history_top_fraction", "resampling": "bilinear-align_corners=False"},
//!  "selectivity", "history_mass", "concentration": [[float x S] x L],
//!  "similarity", "similarity_k", "similarity_v": [[null, float x (S - 1)] x L],
//!  "similarity_mean": [float x L]}
//! \endcode
//!
//! \par Snippet
//! \code
//! auto profile = varkv::ref::calibrate(var, vae, {.classes = {207, 360}, .seeds = {0}});
//! varkv::ref::write_profile_json("calib/profile.json", profile);
//! auto p = varkv::classification::load_profile("calib/profile.json", varkv::classification::ProfileSource::scalekv);
//! \endcode
//!
//! \par Errors
//! Bad rules, requests, key statistics or shapes throw `varkv::Error` naming the argument or tensor.

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "varkv/cache/full_cache.hpp"
#include "varkv/policy/axis.hpp"
#include "varkv_reference/generate.hpp"
#include "varkv_reference/var_model.hpp"
#include "varkv_reference/vqvae.hpp"

namespace varkv::ref {

//! The parameters that turn measured statistics into classes (written into the profile).
struct CalibrationRules {
  int drafters_per_scale = 0;         //!< 0: the default, max(1, round(L / 8))
  double demanding_fraction = 0.25;   //!< share of the layers that are cache-demanding (at least 1 layer)
  int similarity_from = 2;            //!< similarity_mean averages the scales >= this one
  double history_top_fraction = 0.1;  //!< ASI: share (ceil) of the history keys a refiner keeps

  //! Drafters per scale s >= 1 for a model of `layers` layers (resolves the default).
  int drafters(int layers) const;
  //! Cache-demanding layers: max(1, round(demanding_fraction x layers)).
  int demanding(int layers) const;
  //! Throws varkv::Error naming the bad rule for a model of `layers` layers and `scales` scales.
  void validate(int layers, int scales) const;
};

//! The selectivity of one (sequence, head) row (see the file comment).
struct RowSelectivity {
  double history_mass = 0;
  double concentration = 1;
  double asi = 1;
};

//! ASI of one row from the attention mass of its history keys and the total mass of its current
//! keys (any positive scale: the shares are taken of history + current).
RowSelectivity row_selectivity(std::span<const float> history, double current_mass, double history_top_fraction = 0.1);

//! Bilinear resampling (PyTorch, align_corners=False) of a token map [in_h, in_w, dim] (channels last)
//! to [out_h, out_w, dim].
std::vector<double> resample_token_map(std::span<const float> map, int in_h, int in_w, int dim, int out_h, int out_w);

//! Mean over `tokens` of the cosine similarity of a[t] and b[t] (vectors of `dim`); a zero vector has
//! cosine 0.
double mean_token_cosine(std::span<const float> a, std::span<const double> b, std::int64_t tokens, int dim);

//! Means over rows and runs, [layer * scales + scale].
struct CalibrationTables {
  int layers = 0, scales = 0;
  std::vector<double> selectivity, history_mass, concentration;
  std::vector<double> similarity, similarity_k, similarity_v;  //!< NaN at scale 0
  std::vector<double> similarity_mean;                          //!< [layer]: over scales >= similarity_from

  double at(const std::vector<double>& table, int layer, int scale) const {
    return table.at(static_cast<std::size_t>(layer) * scales + scale);
  }
};

//! Sums the per-row statistics of every commit; `tables` returns the means.
class CalibrationAccumulator {
 public:
  CalibrationAccumulator(int layers, ScaleSchedule schedule, double history_top_fraction = 0.1);

  int layers() const { return layers_; }
  const ScaleSchedule& schedule() const { return schedule_; }

  //! The selectivity of every row of one commit: key_stat [N, H, cap + n] is the probability mass of
  //! all n queries of `step` per key (cache slot j at j, own key i at cap + i); positions
  //! [N, H, cap] and lengths (N * H) describe the cache slots before the step's keys join.
  void add_selectivity(int step, int layer, TensorView<const float, 3> key_stat,
                       TensorView<const std::int32_t, 3> positions, std::span<const std::int32_t> lengths);
  //! The K and V similarity of `step` >= 1 against the previous scale: prev_* [N, H, n(step - 1), d],
  //! k, v [N, H, n(step), d].
  void add_similarity(int step, int layer, TensorView<const float, 4> prev_k, TensorView<const float, 4> prev_v,
                      TensorView<const float, 4> k, TensorView<const float, 4> v);

  //! Rows measured so far at (layer, scale) for the selectivity.
  std::int64_t selectivity_rows(int layer, int scale) const { return sel_rows_.at(index(layer, scale)); }
  std::int64_t similarity_rows(int layer, int scale) const { return sim_rows_.at(index(layer, scale)); }

  //! The means; similarity_mean over the scales >= similarity_from. Throws when some (layer, scale)
  //! was never measured.
  CalibrationTables tables(int similarity_from = 2) const;

 private:
  std::size_t index(int layer, int scale) const;
  int layers_;
  ScaleSchedule schedule_;
  double top_fraction_;
  std::vector<double> asi_, hist_, conc_, cos_k_, cos_v_;
  std::vector<std::int64_t> sel_rows_, sim_rows_;
};

//! A generation cache (generate.hpp's `ObservingCache`) that keeps every token (a FullCache<float>)
//! and measures the calibration statistics of every (step, layer) into an accumulator that outlives it.
class CalibratingCache {
 public:
  CalibratingCache(const ModelGeometry& geometry, const ScaleSchedule& schedule, BatchShape batch,
                   CalibrationAccumulator& accumulator);

  const LayerKvStore<float>& layer(int l) const { return full_.layer(l); }
  const KvLedger& ledger() const { return full_.ledger(); }
  const FullCache<float>& full() const { return full_; }

  //! Every step, every layer: probability mass of all the step's queries.
  StatRequest statistics(int step, int layer) const;
  //! Measures (selectivity before the keys join, similarity against the layer's previous commit),
  //! then appends the step's K/V.
  void commit(int step, int l, TensorView<const float, 4> k, TensorView<const float, 4> v,
              TensorView<const float, 3> key_stat);
  //! Refused: calibration needs the key statistics (throws varkv::Error).
  void commit(int step, int l, TensorView<const float, 4> k, TensorView<const float, 4> v);

 private:
  FullCache<float> full_;
  CalibrationAccumulator* acc_;
  std::vector<std::vector<float>> prev_k_, prev_v_;  //!< per layer: the last committed step's K/V
  std::vector<int> last_step_;                        //!< per layer: that step (-1: none)
};

//! The generations to measure.
struct CalibrationRequest {
  std::vector<int> classes;            //!< one image per class, all in one CFG batch per seed
  std::vector<std::uint64_t> seeds;    //!< one run per seed
  double cfg = 4.0;
  int top_k = 900;
  double top_p = 0.95;
  CalibrationRules rules;
};

//! How the model was obtained (for the profile; `calibrate` fills depth, width, heads, patch_nums).
struct CalibrationModelInfo {
  int depth = 0, width = 0, heads = 0, head_dim = 0, vae_ch = 0;
  std::vector<int> patch_nums;
  std::string var_path, vae_path;  //!< both empty: random-init
  std::uint64_t init_seed = 0;     //!< random-init only
};

//! The classes that the rules give.
struct Classification {
  int drafters_per_scale = 0, demanding_layers = 0;
  std::vector<std::uint8_t> drafter;    //!< [layer * scales + scale]
  std::vector<std::uint8_t> demanding;  //!< [layer]
};

//! Applies the rules (file comment) to measured tables; validates the rules first.
Classification classify(const CalibrationTables& tables, const CalibrationRules& rules);

struct CalibrationProfile {
  std::string schedule;  //!< the schedule's name
  CalibrationModelInfo model;
  CalibrationRequest request;
  int runs = 0, sequences_per_run = 0;
  double seconds = 0;
  CalibrationTables tables;
  Classification classes;

  int layers() const { return tables.layers; }
  int scales() const { return tables.scales; }
  bool drafter(int layer, int scale) const { return classes.drafter.at(std::size_t(layer) * scales() + scale) != 0; }
  bool demanding(int layer) const { return classes.demanding.at(static_cast<std::size_t>(layer)) != 0; }
};

struct CalibrationProgress {
  int run = 0, runs = 0;
  std::uint64_t seed = 0;
  ScaleProgress scale;
};
using CalibrationProgressFn = std::function<void(const CalibrationProgress&)>;

//! Runs one generation per seed (no decode) through a CalibratingCache and classifies.
CalibrationProfile calibrate(const VarModel& var, const VqVae& vae, const CalibrationRequest& request,
                             const CalibrationProgressFn& progress = {});

//! The profile as JSON (format in the file comment; keys in that order).
nlohmann::ordered_json profile_to_json(const CalibrationProfile& profile);
//! Writes profile_to_json, one table row per line; throws varkv::Error naming the path when it cannot.
void write_profile_json(const std::string& path, const CalibrationProfile& profile);
//! The human-readable tables: ASI per layer and scale (drafters marked '*'), similarity per layer and
//! scale and its mean (demanding layers marked 'D').
std::string format_profile_table(const CalibrationProfile& profile);

//! An RGB picture of a profile, with where each element sits (for tests and tools).
struct ProfileImage {
  struct Rect {
    int x = 0, y = 0, w = 0, h = 0;
  };
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  //!< [height, width, 3]
  int layers = 0, scales = 0;
  Rect heat_origin;        //!< cell (0, 0); cell (l, s) is shifted by s x w and l x h
  std::vector<Rect> bars;  //!< [layer]: the filled bar of similarity_mean (from bar_zero_x)
  int bar_zero_x = 0;      //!< x of similarity 0
  double bar_unit = 0;     //!< pixels per 1.0 of similarity
  double heat_lo = 0, heat_hi = 1;  //!< the ASI range of the colour scale

  Rect cell(int layer, int scale) const {
    return {heat_origin.x + scale * heat_origin.w, heat_origin.y + layer * heat_origin.h, heat_origin.w, heat_origin.h};
  }
  std::array<std::uint8_t, 3> pixel(int x, int y) const {
    const std::size_t o = (static_cast<std::size_t>(y) * width + x) * 3;
    return {rgb.at(o), rgb.at(o + 1), rgb.at(o + 2)};
  }
};
//! Colour of the ASI heatmap for t in [0, 1] (a viridis-like ramp: dark purple -> yellow).
std::array<std::uint8_t, 3> heat_colour(double t);
inline constexpr std::array<std::uint8_t, 3> kMarkColour{230, 30, 30};     //!< drafter outline, demanding bar
inline constexpr std::array<std::uint8_t, 3> kPlainBarColour{70, 110, 170};  //!< bar of a non-demanding layer

//! Left: heatmap of ASI [layers x scales] (colour bar below, drafter cells outlined in kMarkColour);
//! right: one bar per layer of similarity_mean (demanding layers in kMarkColour); text labels.
ProfileImage render_profile_image(const CalibrationProfile& profile);
void write_profile_png(const std::string& path, const CalibrationProfile& profile);

}  // namespace varkv::ref
