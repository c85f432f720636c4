#include "neurovfm/intensity.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "neurovfm/isa.hpp"
#include "neurovfm/parallel.hpp"
#include "neurovfm/tokens.hpp"

namespace neurovfm {
namespace {

void check_token_shape(const VolumeView& in) {
  if (in.shape[0] % kTokD || in.shape[1] % kTokH || in.shape[2] % kTokW)
    throw std::invalid_argument(
        "volume shape must be a multiple of 4x16x16 to compute token background flags");
}

// Runs body(d, token_background_slab) for every slice d, slabs of 4 slices per unit so
// that each unit owns its tokens' flags (zeroed here).
template <typename Body>
void for_each_slice(const VolumeView& in, std::uint8_t* token_background, int threads,
                    Body&& body) {
  const std::int64_t D = in.shape[0], H = in.shape[1], W = in.shape[2];
  const std::int64_t per_slab = (H / kTokH) * (W / kTokW);
  const std::int64_t slab = token_background ? kTokD : 1;
  const std::size_t units = static_cast<std::size_t>(D / slab);
  parallel_for(units, threads, 1, [&](std::size_t begin, std::size_t end) {
    for (std::size_t u = begin; u < end; ++u) {
      std::uint8_t* slab_background = nullptr;
      if (token_background) {
        slab_background = token_background + static_cast<std::int64_t>(u) * per_slab;
        std::memset(slab_background, 0, static_cast<std::size_t>(per_slab));
      }
      for (std::int64_t d = static_cast<std::int64_t>(u) * slab; d < (static_cast<std::int64_t>(u) + 1) * slab; ++d)
        body(d, slab_background);
    }
  });
}

inline double clip(double x, double lo, double hi) {
  // np.clip semantics: NaN stays NaN.
  return x < lo ? lo : (x > hi ? hi : x);
}

}  // namespace

namespace {

// The cache's quantisation (docs/numbers.md, "Quantisation"): uint8(v * 255)
// by truncation of the float64 value v, as NumPy's (v * 255).astype(np.uint8)
// on the reference's float64 arrays. Never of v's float32 rounding: that
// rounds 0.99999999987 (the top of a window, because of the + 1e-8) up to 1
// and stores 255 where the reference stores 254. Values outside [0, 255]
// (impossible after clipping) are clamped, NaN gives 0.
inline std::uint8_t quantize_one(double v) {
  const double q = v * 255.0;
  return q >= 255.0 ? std::uint8_t(255) : (q > 0.0 ? static_cast<std::uint8_t>(q) : std::uint8_t(0));
}

// Applies up to 8 per-voxel maps f(k, x) -> double (x the voxel as double) to
// a [D, H, W] view, writing float32 (the double value rounded) or quantised
// uint8 (quantize_one of the double value) outputs in C order, the voxel
// foreground mask (x > fg_threshold) and the token background flags. For 8-
// and 16-bit inputs every possible value is mapped once into a table, built
// by the same two functions of the same double value (identical bytes),
// which removes the per-voxel double arithmetic.
template <typename Map>
void map_volume(const VolumeView& in, int n_maps, void* const* out, bool quantize,
                double fg_threshold, std::uint8_t* token_background, std::uint8_t* foreground,
                int threads, Map&& f) {
  if (token_background) check_token_shape(in);
  if (n_maps < 0 || n_maps > 8) throw std::invalid_argument("intensity: 0 to 8 output maps");
  const std::int64_t H = in.shape[1], W = in.shape[2];
  const std::int64_t wt = W / kTokW;
  const std::int64_t n = in.shape[0] * H * W;
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(in.data);
    constexpr bool small = std::is_integral_v<T> && sizeof(T) <= 2;
    constexpr std::int64_t kVals = small ? (std::int64_t(1) << (8 * sizeof(T))) : 1;
    constexpr std::int64_t kOff = (small && std::is_signed_v<T>) ? kVals / 2 : 0;
    const bool use_table = small && n >= 4 * kVals;
    std::vector<float> ftab;
    std::vector<std::uint8_t> qtab, fgtab;
    if (use_table) {
      (quantize ? qtab.resize(static_cast<std::size_t>(n_maps * kVals))
                : ftab.resize(static_cast<std::size_t>(n_maps * kVals)));
      fgtab.resize(static_cast<std::size_t>(kVals));
      for (std::int64_t v = 0; v < kVals; ++v) {
        const double x = static_cast<double>(v - kOff);
        for (int k = 0; k < n_maps; ++k) {
          const double r = f(k, x);
          if (quantize)
            qtab[static_cast<std::size_t>(k * kVals + v)] = quantize_one(r);
          else
            ftab[static_cast<std::size_t>(k * kVals + v)] = static_cast<float>(r);
        }
        fgtab[static_cast<std::size_t>(v)] = x > fg_threshold;
      }
    }
    for_each_slice(in, token_background, threads,
                   [&](std::int64_t d, std::uint8_t* slab_background) {
                     for (std::int64_t h = 0; h < H; ++h) {
                       const T* row = src + d * in.strides[0] + h * in.strides[1];
                       const std::int64_t o = (d * H + h) * W;
                       const std::int64_t sw = in.strides[2];
                       std::uint8_t* token_background_row =
                           slab_background ? slab_background + (h / kTokH) * wt : nullptr;
                       for (std::int64_t w = 0; w < W; ++w) {
                         const T raw = row[w * sw];
                         bool is_fg;
                         if (use_table) {
                           const std::int64_t v = static_cast<std::int64_t>(raw) + kOff;
                           for (int k = 0; k < n_maps; ++k) {
                             if (quantize)
                               static_cast<std::uint8_t*>(out[k])[o + w] =
                                   qtab[static_cast<std::size_t>(k * kVals + v)];
                             else
                               static_cast<float*>(out[k])[o + w] =
                                   ftab[static_cast<std::size_t>(k * kVals + v)];
                           }
                           is_fg = fgtab[static_cast<std::size_t>(v)] != 0;
                         } else {
                           const double x = static_cast<double>(raw);
                           for (int k = 0; k < n_maps; ++k) {
                             const double r = f(k, x);
                             if (quantize)
                               static_cast<std::uint8_t*>(out[k])[o + w] = quantize_one(r);
                             else
                               static_cast<float*>(out[k])[o + w] = static_cast<float>(r);
                           }
                           is_fg = x > fg_threshold;
                         }
                         if (foreground) foreground[o + w] = is_fg;
                         if (token_background_row && !is_fg) token_background_row[w / kTokW] = 1;
                       }
                     }
                   });
  });
}

}  // namespace

void ct_windows(const VolumeView& in, const Window* windows, int n_windows, void* const* out,
                bool quantize, double fg_threshold, std::uint8_t* token_background,
                std::uint8_t* foreground, int threads) {
  if (n_windows < 0 || n_windows > 8) throw std::invalid_argument("ct_windows: 0 to 8 windows");
  double lo[8], hi[8], den[8];
  for (int k = 0; k < n_windows; ++k) {
    lo[k] = windows[k].level - windows[k].width / 2.0;
    hi[k] = windows[k].level + windows[k].width / 2.0;
    den[k] = (hi[k] - lo[k]) + 1e-8;  // the reference's (upper - lower + 1e-8)
  }
  map_volume(in, n_windows, out, quantize, fg_threshold, token_background, foreground, threads,
             [&](int k, double x) { return (clip(x, lo[k], hi[k]) - lo[k]) / den[k]; });
}

void mri_normalise(const VolumeView& in, double lo, double hi, double mn, double mx,
                   double fg_threshold, void* out, bool quantize, std::uint8_t* token_background,
                   std::uint8_t* foreground, int threads) {
  const double den = mx - mn + 1e-8;
  void* outs[1] = {out};
  map_volume(in, 1, outs, quantize, fg_threshold, token_background, foreground, threads,
             [&](int, double x) { return (clip(x, lo, hi) - mn) / den; });
}

namespace {

// NumPy's _lerp.
double lerp(double a, double b, double t) {
  const double diff = b - a;
  return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

struct Ranks {
  std::vector<std::int64_t> prev, next;
  std::vector<double> gamma;
};

Ranks make_ranks(std::int64_t n, const double* q, int nq) {
  Ranks r;
  for (int i = 0; i < nq; ++i) {
    const double qq = q[i] / 100.0;
    const double v = static_cast<double>(n - 1) * qq;
    double pf = std::floor(v);
    std::int64_t p = static_cast<std::int64_t>(pf), nx = p + 1;
    if (v >= static_cast<double>(n - 1)) p = nx = n - 1;
    if (v < 0) p = nx = 0;
    r.prev.push_back(p);
    r.next.push_back(nx);
    r.gamma.push_back(v - pf);
  }
  return r;
}

// Counting selection for small integer types.
template <typename T>
void percentiles_counting(const VolumeView& in, const Ranks& r, int nq, double* result,
                          double* vmin, double* vmax, int threads) {
  constexpr std::int64_t kBins = std::int64_t(1) << (8 * sizeof(T));
  constexpr std::int64_t kOff = std::is_signed_v<T> ? kBins / 2 : 0;
  const std::int64_t D = in.shape[0], H = in.shape[1], W = in.shape[2];
  const T* src = static_cast<const T*>(in.data);
  const int nthreads = static_cast<int>(std::min<std::int64_t>(clamp_threads(threads), D));
  std::vector<std::vector<std::int64_t>> hists(static_cast<std::size_t>(nthreads));
  const std::size_t per = static_cast<std::size_t>((D + nthreads - 1) / nthreads);
  parallel_for(static_cast<std::size_t>(nthreads), nthreads, 1,
               [&](std::size_t b, std::size_t e) {
                 for (std::size_t t = b; t < e; ++t) {
                   auto& h = hists[t];
                   h.assign(static_cast<std::size_t>(kBins), 0);
                   const std::int64_t d0 = static_cast<std::int64_t>(t * per);
                   const std::int64_t d1 = std::min<std::int64_t>(D, d0 + static_cast<std::int64_t>(per));
                   for (std::int64_t d = d0; d < d1; ++d)
                     for (std::int64_t y = 0; y < H; ++y) {
                       const T* row = src + d * in.strides[0] + y * in.strides[1];
                       for (std::int64_t x = 0; x < W; ++x)
                         ++h[static_cast<std::size_t>(static_cast<std::int64_t>(row[x * in.strides[2]]) + kOff)];
                     }
                 }
               });
  std::vector<std::int64_t> hist(static_cast<std::size_t>(kBins), 0);
  for (auto& h : hists)
    for (std::int64_t i = 0; i < kBins; ++i) hist[static_cast<std::size_t>(i)] += h[static_cast<std::size_t>(i)];
  // value of rank k: walk the cumulative counts.
  auto value_at = [&](std::int64_t k) {
    std::int64_t c = 0;
    for (std::int64_t i = 0; i < kBins; ++i) {
      c += hist[static_cast<std::size_t>(i)];
      if (c > k) return static_cast<double>(i - kOff);
    }
    return static_cast<double>(kBins - 1 - kOff);
  };
  for (int i = 0; i < nq; ++i) {
    result[i] = lerp(value_at(r.prev[static_cast<std::size_t>(i)]), value_at(r.next[static_cast<std::size_t>(i)]),
                     r.gamma[static_cast<std::size_t>(i)]);
  }
  const std::int64_t n = D * H * W;
  *vmin = value_at(0);
  *vmax = value_at(n - 1);
}

template <typename T>
void percentiles_select(const VolumeView& in, const Ranks& r, int nq, double* result, double* vmin,
                        double* vmax, int threads) {
  const std::int64_t D = in.shape[0], H = in.shape[1], W = in.shape[2];
  const std::int64_t n = D * H * W;
  std::vector<double> v(static_cast<std::size_t>(n));
  const T* src = static_cast<const T*>(in.data);
  std::vector<unsigned char> has_nan(static_cast<std::size_t>(D), 0);
  parallel_for(static_cast<std::size_t>(D), threads, 1, [&](std::size_t b, std::size_t e) {
    for (std::size_t d = b; d < e; ++d) {
      double* o = v.data() + static_cast<std::int64_t>(d) * H * W;
      for (std::int64_t y = 0; y < H; ++y) {
        const T* row = src + static_cast<std::int64_t>(d) * in.strides[0] + y * in.strides[1];
        for (std::int64_t x = 0; x < W; ++x) {
          const double val = static_cast<double>(row[x * in.strides[2]]);
          if (std::isnan(val)) has_nan[d] = 1;
          o[y * W + x] = val;
        }
      }
    }
  });
  if (std::any_of(has_nan.begin(), has_nan.end(), [](unsigned char c) { return c != 0; })) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int i = 0; i < nq; ++i) result[i] = nan;
    *vmin = *vmax = nan;
    return;
  }
  // Select the needed ranks in increasing order on shrinking ranges.
  std::vector<std::int64_t> ks = r.prev;
  ks.insert(ks.end(), r.next.begin(), r.next.end());
  ks.push_back(0);
  ks.push_back(n - 1);
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  auto first = v.begin();
  std::vector<double> vals(ks.size());
  for (std::size_t i = 0; i < ks.size(); ++i) {
    auto nth = v.begin() + ks[i];
    std::nth_element(first, nth, v.end());
    vals[i] = *nth;
    first = nth + 1;
  }
  auto at = [&](std::int64_t k) {
    return vals[static_cast<std::size_t>(std::lower_bound(ks.begin(), ks.end(), k) - ks.begin())];
  };
  for (int i = 0; i < nq; ++i)
    result[i] = lerp(at(r.prev[static_cast<std::size_t>(i)]), at(r.next[static_cast<std::size_t>(i)]), r.gamma[static_cast<std::size_t>(i)]);
  *vmin = at(0);
  *vmax = at(n - 1);
}

}  // namespace

void percentiles(const VolumeView& in, const double* q, int nq, double* result, double* vmin,
                 double* vmax, int threads) {
  const std::int64_t n = in.shape[0] * in.shape[1] * in.shape[2];
  if (n <= 0) throw std::invalid_argument("percentiles of an empty volume");
  for (int i = 0; i < nq; ++i)
    if (!(q[i] >= 0.0 && q[i] <= 100.0))
      throw std::invalid_argument("percentiles must be in [0, 100]");
  const Ranks r = make_ranks(n, q, nq);
  dispatch_dtype(in.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_integral_v<T> && sizeof(T) <= 2)
      percentiles_counting<T>(in, r, nq, result, vmin, vmax, threads);
    else
      percentiles_select<T>(in, r, nq, result, vmin, vmax, threads);
  });
}

}  // namespace neurovfm

namespace neurovfm {

namespace {

// float(x) / 255.0f; the AVX2 variant divides 8 floats per instruction and
// runs at memory-copy speed (same IEEE division, same bytes).
void dequant_base(const std::uint8_t* in, float* out, std::size_t b, std::size_t e) {
  for (std::size_t i = b; i < e; ++i) out[i] = static_cast<float>(in[i]) / 255.0f;
}

NEUROVFM_TARGET_AVX2 void dequant_avx2(const std::uint8_t* in, float* out, std::size_t b, std::size_t e) {
  for (std::size_t i = b; i < e; ++i) out[i] = static_cast<float>(in[i]) / 255.0f;
}

}  // namespace

void dequantize_u8(const std::uint8_t* in, float* out, std::int64_t n, int threads) {
  const bool avx2 = use_avx2();
  // Memory-bound: split only volumes large enough to pay for a second thread.
  parallel_for(static_cast<std::size_t>(n), threads, std::size_t(1) << 21, [&](std::size_t b, std::size_t e) {
    if (avx2)
      dequant_avx2(in, out, b, e);
    else
      dequant_base(in, out, b, e);
  });
}

}  // namespace neurovfm
