#pragma once
//! \file
//! Umbrella header: the host-side public surface of varkv.

#include "varkv/attention/reference_attention.hpp"
#include "varkv/cache/full_cache.hpp"
#include "varkv/cache/layer_kv_store.hpp"
#include "varkv/core/dtype.hpp"
#include "varkv/core/error.hpp"
#include "varkv/core/kv_ledger.hpp"
#include "varkv/core/model_geometry.hpp"
#include "varkv/core/scale_schedule.hpp"
#include "varkv/core/tensor_view.hpp"
