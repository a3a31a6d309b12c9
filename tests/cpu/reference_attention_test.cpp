#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <varkv/attention/reference_attention.hpp>

#include "../support/random.hpp"

using namespace varkv;
using varkv::testing::fresh_seed;
using varkv::testing::random_normal;

namespace {

// A problem with owned buffers; keys of row r are cache[0..len_r) followed by the new keys.
struct Problem {
  std::int64_t B, H, nq, d, cap, n_new;
  std::vector<float> q, ck, cv, nk, nv, out, lse, stat;
  std::vector<std::int32_t> len;

  Problem(std::int64_t B_, std::int64_t H_, std::int64_t nq_, std::int64_t d_, std::int64_t cap_, std::int64_t n_new_,
          std::mt19937_64& rng)
      : B(B_), H(H_), nq(nq_), d(d_), cap(cap_), n_new(n_new_) {
    q = random_normal(B * H * nq * d, rng);
    ck = random_normal(B * H * cap * d, rng);
    cv = random_normal(B * H * cap * d, rng);
    nk = random_normal(B * H * n_new * d, rng);
    nv = random_normal(B * H * n_new * d, rng);
    // Poison outputs: every element must be written.
    out.assign(B * H * nq * d, std::numeric_limits<float>::quiet_NaN());
    lse.assign(B * H * nq, std::numeric_limits<float>::quiet_NaN());
    stat.assign(B * H * (cap + n_new), std::numeric_limits<float>::quiet_NaN());
    len.assign(B * H, static_cast<std::int32_t>(cap));
  }

  ReferenceAttentionArgs args(double scale, std::span<const std::int32_t> observers, KeyStatistic st) {
    ReferenceAttentionArgs a;
    a.q = make_view<4, const float>("q", q.data(), {B, H, nq, d});
    a.cache_k = make_view<4, const float>("cache_k", ck.data(), {B, H, cap, d});
    a.cache_v = make_view<4, const float>("cache_v", cv.data(), {B, H, cap, d});
    a.cache_len = len;
    a.new_k = make_view<4, const float>("new_k", nk.data(), {B, H, n_new, d});
    a.new_v = make_view<4, const float>("new_v", nv.data(), {B, H, n_new, d});
    a.softmax_scale = scale;
    a.out = make_view<4>("out", out.data(), {B, H, nq, d});
    a.lse = make_view<3>("lse", lse.data(), {B, H, nq});
    a.observers = observers;
    a.statistic = st;
    a.key_stat = make_view<3>("key_stat", stat.data(), {B, H, cap + n_new});
    return a;
  }
};

// Naive softmax(Q K^T * scale) V per row, built from explicitly concatenated K and V matrices, in
// long double, with the probability matrix materialised.
struct Naive {
  std::vector<long double> out, lse, stat;
};
Naive naive(const Problem& p, double scale, const std::vector<std::int32_t>& observers, KeyStatistic st) {
  Naive r;
  r.out.assign(p.B * p.H * p.nq * p.d, 0);
  r.lse.assign(p.B * p.H * p.nq, 0);
  r.stat.assign(p.B * p.H * (p.cap + p.n_new), 0);
  for (std::int64_t row = 0; row < p.B * p.H; ++row) {
    const std::int64_t len = p.len[row], nk = len + p.n_new;
    std::vector<long double> K(nk * p.d), V(nk * p.d);
    std::vector<std::int64_t> slot(nk);
    for (std::int64_t j = 0; j < len; ++j) {
      slot[j] = j;
      for (std::int64_t c = 0; c < p.d; ++c) {
        K[j * p.d + c] = p.ck[(row * p.cap + j) * p.d + c];
        V[j * p.d + c] = p.cv[(row * p.cap + j) * p.d + c];
      }
    }
    for (std::int64_t j = 0; j < p.n_new; ++j) {
      slot[len + j] = p.cap + j;
      for (std::int64_t c = 0; c < p.d; ++c) {
        K[(len + j) * p.d + c] = p.nk[(row * p.n_new + j) * p.d + c];
        V[(len + j) * p.d + c] = p.nv[(row * p.n_new + j) * p.d + c];
      }
    }
    std::vector<long double> S(p.nq * nk), P(p.nq * nk);
    for (std::int64_t i = 0; i < p.nq; ++i) {
      long double z = 0;
      for (std::int64_t j = 0; j < nk; ++j) {
        long double s = 0;
        for (std::int64_t c = 0; c < p.d; ++c) s += p.q[(row * p.nq + i) * p.d + c] * K[j * p.d + c];
        S[i * nk + j] = s * scale;
        z += std::exp(S[i * nk + j]);
      }
      r.lse[row * p.nq + i] = std::log(z);
      for (std::int64_t j = 0; j < nk; ++j) P[i * nk + j] = std::exp(S[i * nk + j]) / z;
      for (std::int64_t c = 0; c < p.d; ++c) {
        long double acc = 0;
        for (std::int64_t j = 0; j < nk; ++j) acc += P[i * nk + j] * V[j * p.d + c];
        r.out[(row * p.nq + i) * p.d + c] = acc;
      }
    }
    for (auto i : observers)
      for (std::int64_t j = 0; j < nk; ++j)
        r.stat[row * (p.cap + p.n_new) + slot[j]] +=
            st == KeyStatistic::probability_mass ? P[i * nk + j] : S[i * nk + j];
  }
  return r;
}

// Relative Frobenius error.
double rel_err(const std::vector<float>& got, const std::vector<long double>& ref) {
  long double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return static_cast<double>(std::sqrt(num / std::max(den, 1e-300L)));
}

}  // namespace

// fp32 inputs, fp64 sums, fp32 outputs: the only error left is fp32 rounding of the outputs.
constexpr double kBound = 1e-6;

TEST(ReferenceAttention, MatchesNaiveSoftmaxOnRandomRaggedProblems) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  std::mt19937_64 rng(seed);
  struct Shape { std::int64_t B, H, nq, d, cap, n_new; };
  for (Shape s : {Shape{2, 3, 4, 8, 14, 4}, Shape{1, 2, 9, 16, 30, 9}, Shape{2, 2, 16, 64, 55, 16}, Shape{1, 1, 1, 4, 0, 1}}) {
    Problem p(s.B, s.H, s.nq, s.d, s.cap, s.n_new, rng);
    std::uniform_int_distribution<int> pick(0, static_cast<int>(s.cap));
    for (auto& l : p.len) l = pick(rng);  // ragged rows
    std::vector<std::int32_t> observers;
    for (std::int32_t i = 0; i < s.nq; i += 2) observers.push_back(i);
    for (auto st : {KeyStatistic::probability_mass, KeyStatistic::logit_sum}) {
      const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
      reference_attention(p.args(scale, observers, st));
      const Naive r = naive(p, scale, observers, st);
      EXPECT_LT(rel_err(p.out, r.out), kBound);
      EXPECT_LT(rel_err(p.lse, r.lse), kBound);
      EXPECT_LT(rel_err(p.stat, r.stat), kBound);
      // Evicted or unused slots report exactly zero.
      for (std::int64_t row = 0; row < s.B * s.H; ++row)
        for (std::int64_t j = p.len[row]; j < s.cap; ++j) ASSERT_EQ(p.stat[row * (s.cap + s.n_new) + j], 0.0f);
    }
  }
}

TEST(ReferenceAttention, ProbabilityMassSumsToObserverCount) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  std::mt19937_64 rng(seed);
  Problem p(1, 2, 16, 32, 40, 16, rng);
  std::vector<std::int32_t> observers = {0, 5, 10, 15};
  reference_attention(p.args(0.2, observers, KeyStatistic::probability_mass));
  for (int row = 0; row < 2; ++row) {
    double total = 0;
    for (int j = 0; j < 56; ++j) total += p.stat[row * 56 + j];
    EXPECT_NEAR(total, 4.0, 1e-5);
  }
}

TEST(ReferenceAttention, PlantedKeyTakesTheMassAndLargeLogitsStayFinite) {
  const auto seed = fresh_seed();
  SCOPED_TRACE(varkv::testing::seed_note(seed));
  std::mt19937_64 rng(seed);
  Problem p(1, 1, 3, 16, 20, 3, rng);
  // Cache slot 7 is every query's direction, scaled to twice the longest other key (+1): then
  // q.k7 - q.kj >= |k7| (|k7| - |kj|) > |k7|^2 / 2, a logit margin in the thousands at scale 40, so
  // it must win all the mass whatever the random keys (a plain copy of k7 as q could lose to a longer key).
  auto norm = [](const float* v) {
    double s = 0;
    for (int c = 0; c < 16; ++c) s += double(v[c]) * v[c];
    return std::sqrt(s);
  };
  double longest = 0;
  for (int j = 0; j < 20; ++j)
    if (j != 7) longest = std::max(longest, norm(&p.ck[j * 16]));
  for (int j = 0; j < 3; ++j) longest = std::max(longest, norm(&p.nk[j * 16]));
  const double grow = (2 * longest + 1) / norm(&p.ck[7 * 16]);
  for (int c = 0; c < 16; ++c) p.ck[7 * 16 + c] = static_cast<float>(p.ck[7 * 16 + c] * grow);
  for (int i = 0; i < 3; ++i)
    for (int c = 0; c < 16; ++c) p.q[i * 16 + c] = p.ck[7 * 16 + c];
  std::vector<std::int32_t> observers = {0, 1, 2};
  reference_attention(p.args(40.0, observers, KeyStatistic::probability_mass));  // logits in the thousands
  EXPECT_NEAR(p.stat[7], 3.0, 1e-4);
  for (int c = 0; c < 16; ++c) EXPECT_NEAR(p.out[c], p.cv[7 * 16 + c], 1e-4);
  for (float l : p.lse) EXPECT_TRUE(std::isfinite(l));
}

TEST(ReferenceAttention, BadArgumentsAreNamed) {
  std::mt19937_64 rng(1);
  Problem p(1, 2, 4, 8, 6, 4, rng);
  std::vector<std::int32_t> none;
  auto a = p.args(0.3, none, KeyStatistic::probability_mass);
  a.new_v = make_view<4, const float>("new_v", p.nv.data(), {1, 2, 3, 8});
  try {
    reference_attention(a);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'new_v': expected shape [1, 2, 4, 8], got [1, 2, 3, 8]");
  }
  a = p.args(0.3, none, KeyStatistic::probability_mass);
  p.len[1] = 7;
  EXPECT_THROW(reference_attention(a), Error);
  p.len[1] = 6;
  std::vector<std::int32_t> unordered = {2, 1};
  EXPECT_THROW(reference_attention(p.args(0.3, unordered, KeyStatistic::probability_mass)), Error);
  EXPECT_THROW(reference_attention(p.args(-1.0, none, KeyStatistic::probability_mass)), Error);
  Problem empty(1, 1, 2, 4, 3, 0, rng);
  empty.len[0] = 0;
  try {
    reference_attention(empty.args(0.5, none, KeyStatistic::probability_mass));
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "reference attention: sequence 0, head 0 has no key to attend to");
  }
}
