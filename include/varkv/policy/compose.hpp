#pragma once
//! \file
//! Composition of per-axis policies into one cache policy (Boost.Hana, host/type level only).
//!
//! \par Overview
//! `cache_policy<Ps...>` takes at most one policy per axis, in any order; a missing axis defaults to
//! its no-op (eviction::none, budget::unlimited, classification::uniform, retention::none).
//! `composable<Ps...>` is the same check as a concept (usable in requires-expressions). Each slot is
//! checked against its axis concept (`eviction_policy`, `budget_policy`, `classification_policy`,
//! `retention_policy`), with a message naming the slot. The composed type is a plain struct of the
//! four policies plus `PolicyOptions`: that is what a cache type (and a kernel launcher) receives.
//!
//! \par Snippet
//! \code
//! auto p = varkv::make_policy(varkv::budget::uniform{{0.1}}, varkv::eviction::snapkv{});
//! \endcode
#include <boost/hana.hpp>
#include <type_traits>
#include "varkv/policy/budget/unlimited.hpp"
#include "varkv/policy/retention/retention_concept.hpp"
#include "varkv/policy/classification/classification_concept.hpp"
#include "varkv/policy/classification/uniform.hpp"
#include "varkv/policy/eviction/no_eviction.hpp"
#include "varkv/policy/retention/none.hpp"

namespace varkv {
namespace hana = boost::hana;
namespace detail {
template <class P> concept has_axis = requires { typename P::axis; };
template <class P> constexpr bool known_axis() {
  if constexpr (has_axis<P>)
    return std::is_same_v<typename P::axis, eviction_axis> || std::is_same_v<typename P::axis, budget_axis> ||
           std::is_same_v<typename P::axis, classification_axis> || std::is_same_v<typename P::axis, retention_axis>;
  else
    return false;
}
template <class Axis, class... Ps> constexpr std::size_t axis_count() {
  return hana::count_if(hana::tuple_t<Ps...>, [](auto t) {
    using P = typename std::remove_cvref_t<decltype(t)>::type;
    if constexpr (has_axis<P>) return hana::bool_c<std::is_same_v<typename P::axis, Axis>>;
    else return hana::false_c;
  });
}
template <class Axis, class Default, class... Ps> struct pick {
  using type = typename std::remove_cvref_t<decltype(hana::find_if(hana::tuple_t<Ps...>, [](auto t) {
                 using P = typename std::remove_cvref_t<decltype(t)>::type;
                 if constexpr (has_axis<P>) return hana::bool_c<std::is_same_v<typename P::axis, Axis>>;
                 else return hana::false_c;
               }).value_or(hana::type_c<Default>))>::type;
};
}  // namespace detail

template <class... Ps>
concept composable = (detail::known_axis<Ps>() && ...) && detail::axis_count<eviction_axis, Ps...>() <= 1 &&
                     detail::axis_count<budget_axis, Ps...>() <= 1 &&
                     detail::axis_count<classification_axis, Ps...>() <= 1 &&
                     detail::axis_count<retention_axis, Ps...>() <= 1;

template <class... Ps>
struct cache_policy {
  static_assert((detail::known_axis<Ps>() && ...),
                "varkv::cache_policy: every policy needs `using axis = varkv::{eviction,budget,classification,retention}_axis;`");
  static_assert(detail::axis_count<eviction_axis, Ps...>() <= 1, "varkv::cache_policy: two eviction policies given");
  static_assert(detail::axis_count<budget_axis, Ps...>() <= 1, "varkv::cache_policy: two budget policies given");
  static_assert(detail::axis_count<classification_axis, Ps...>() <= 1,
                "varkv::cache_policy: two classification policies given");
  static_assert(detail::axis_count<retention_axis, Ps...>() <= 1, "varkv::cache_policy: two retention policies given");

  using eviction_type = typename detail::pick<eviction_axis, eviction::none, Ps...>::type;
  using budget_type = typename detail::pick<budget_axis, budget::unlimited, Ps...>::type;
  using classification_type = typename detail::pick<classification_axis, classification::uniform, Ps...>::type;
  using retention_type = typename detail::pick<retention_axis, retention::none, Ps...>::type;
  static_assert(eviction_policy<eviction_type>, "varkv::cache_policy: eviction policy does not satisfy varkv::eviction_policy");
  static_assert(budget_policy<budget_type>, "varkv::cache_policy: budget policy does not satisfy varkv::budget_policy");
  static_assert(classification_policy<classification_type>, "varkv::cache_policy: classification policy does not satisfy varkv::classification_policy");
  static_assert(retention_policy<retention_type>, "varkv::cache_policy: retention policy does not satisfy varkv::retention_policy");

  eviction_type eviction{};
  budget_type budget{};
  classification_type classification{};
  retention_type retention{};
  PolicyOptions options{};  //!< runtime options of the whole policy (CFG selection)

  cache_policy() = default;
  explicit cache_policy(const Ps&... ps) requires(sizeof...(Ps) > 0) { (assign(ps), ...); }

 private:
  template <class P> void assign(const P& p) {
    if constexpr (std::is_same_v<typename P::axis, eviction_axis>) eviction = p;
    else if constexpr (std::is_same_v<typename P::axis, budget_axis>) budget = p;
    else if constexpr (std::is_same_v<typename P::axis, classification_axis>) classification = p;
    else retention = p;
  }
};

template <class... Ps> requires composable<Ps...>
cache_policy<Ps...> make_policy(const Ps&... ps) { return cache_policy<Ps...>(ps...); }

//! What the budget axis of `policy` sees for (step, layer l), head 0: the layer's class and the number
//! of drafters among all layers at this step. Every cache type sizes its rows through this, so CPU and
//! GPU caches agree.
template <class Policy>
BudgetContext budget_context(const Policy& policy, int step, int l, const ScaleSchedule& schedule,
                             const ModelGeometry& geometry) {
  BudgetContext bc{step, l, 0, &schedule, &geometry, policy.classification.classify(step, l), 0};
  for (int o = 0; o < geometry.layers; ++o) bc.drafters += policy.classification.classify(step, o) == LayerClass::drafter;
  return bc;
}

namespace detail {
template <class P> concept declares_key_norm = requires { requires P::uses_key_norm; };
template <class P> concept declares_accumulated = requires { requires P::uses_accumulated; };
template <class P> concept declares_head_split = requires { requires P::head_adaptive_split; };
}  // namespace detail

//! What a cache type must provide for a composed policy, decided at compile time (CPU and GPU caches
//! read the same answers): everything else compiles out.
template <class Policy>
struct policy_traits {
  using eviction_type = typename Policy::eviction_type;
  using budget_type = typename Policy::budget_type;
  //! No eviction and no budget: the cache only appends.
  static constexpr bool keeps_all =
      std::is_same_v<eviction_type, eviction::none> && std::is_same_v<budget_type, budget::unlimited>;
  static constexpr bool key_norm = detail::declares_key_norm<eviction_type>;        //!< candidates' key norms
  static constexpr bool accumulated = detail::declares_accumulated<eviction_type>;  //!< per-slot running statistic
  static constexpr bool head_split = detail::declares_head_split<budget_type>;      //!< one budget over the heads
};

}  // namespace varkv
