// The forward's window sums of attn_impl='window' (window_attention.py), float32 on the CPU.
//
// One pass per query over its window keys: the window logits, their exponentials, and the
// sums the biased output needs, with the next keys' rows prefetched (the rows of a query's
// window are scattered over the memory, so the hardware prefetcher cannot guess them).
// Built at first use for the machine's ATen CPU capability (AVX-512, AVX2).

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kPrefetchAhead = 4;  // keys; 2 and 8 were slower at 800x320

void prefetch_row(const float* row, int64_t channels) {
  for (int64_t c = 0; c < channels; c += 64 / sizeof(float)) __builtin_prefetch(row + c);
}

// q [B, Q, C], k, v [B, N, C] (C = H x D, heads side by side), gain, index [B, Q, W],
// out0 [B, Q, C] and lse0 [B, Q, H] from the fused kernel without bias. Returns the biased
// output [B, Q, C], its log-sum-exp [B, Q, H] and the window logits [B, Q, W, H].
std::vector<at::Tensor> window_forward(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& gain,
                                       const at::Tensor& index, const at::Tensor& out0,
                                       const at::Tensor& lse0, int64_t heads, double scale) {
  for (const at::Tensor* t : {&q, &k, &v, &gain, &out0, &lse0}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "window_forward takes contiguous float32 tensors");
  }
  TORCH_CHECK(index.scalar_type() == at::kLong && index.is_contiguous(), "window_forward takes a contiguous int64 index");
  const int64_t batch = q.size(0), queries = q.size(1), channels = q.size(2);
  const int64_t tokens = k.size(1), width = index.size(2), dims = channels / heads;
  TORCH_CHECK(dims % kLanes == 0, "head width must be a multiple of ", kLanes);
  auto out = at::empty_like(out0);
  auto lse = at::empty_like(lse0);
  auto logits = at::empty({batch, queries, width, heads}, q.options());
  const float* q_data = q.data_ptr<float>();
  const float* k_data = k.data_ptr<float>();
  const float* v_data = v.data_ptr<float>();
  const float* gain_data = gain.data_ptr<float>();
  const int64_t* index_data = index.data_ptr<int64_t>();
  const float* out0_data = out0.data_ptr<float>();
  const float* lse0_data = lse0.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  float* lse_data = lse.data_ptr<float>();
  float* logits_data = logits.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  const int64_t entries = width * heads;

  at::parallel_for(0, batch * queries, 8, [&](int64_t begin, int64_t end) {
    // lse0 of this query repeated along [W, H], so that one vector of it lines up with
    // any kLanes consecutive (key, head) entries.
    std::vector<float> lse_pattern(heads + kLanes), mass(entries), sums(channels), denom(heads);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t first_key = row / queries * tokens;
      const float* q_row = q_data + row * channels;
      const int64_t* keys = index_data + row * width;
      const float* row_gain = gain_data + row * width;
      float* row_logits = logits_data + row * entries;

      for (int64_t w = 0; w < width; ++w) {
        if (w + kPrefetchAhead < width) {
          prefetch_row(k_data + (first_key + keys[w + kPrefetchAhead]) * channels, channels);
        }
        const float* k_row = k_data + (first_key + keys[w]) * channels;
        for (int64_t h = 0; h < heads; ++h) {
          const float* qh = q_row + h * dims;
          const float* kh = k_row + h * dims;
          Vec dot = Vec::loadu(qh) * Vec::loadu(kh);
          for (int64_t c = kLanes; c < dims; c += kLanes) {
            dot = at::vec::fmadd(Vec::loadu(qh + c), Vec::loadu(kh + c), dot);
          }
          row_logits[w * heads + h] = dot.reduce_add() * scale_f;
        }
      }

      for (int64_t i = 0; i < heads + kLanes; ++i) lse_pattern[i] = lse0_data[row * heads + i % heads];
      for (int64_t i = 0; i < entries; i += kLanes) {
        const int64_t n = std::min(kLanes, entries - i);
        const Vec shift = Vec::loadu(lse_pattern.data() + i % heads);
        (Vec::loadu(row_logits + i, n) - shift).exp_u20().store(mass.data() + i, n);
      }

      std::fill(sums.begin(), sums.end(), 0.f);
      std::fill(denom.begin(), denom.end(), 0.f);
      for (int64_t w = 0; w < width; ++w) {
        if (w + kPrefetchAhead < width) {
          prefetch_row(v_data + (first_key + keys[w + kPrefetchAhead]) * channels, channels);
        }
        if (row_gain[w] == 0.f) continue;  // outside the map, or no bias: no correction
        const float* v_row = v_data + (first_key + keys[w]) * channels;
        for (int64_t h = 0; h < heads; ++h) {
          const float extra = row_gain[w] * mass[w * heads + h];
          denom[h] += extra;
          const Vec weight(extra);
          for (int64_t c = h * dims; c < (h + 1) * dims; c += kLanes) {
            at::vec::fmadd(weight, Vec::loadu(v_row + c), Vec::loadu(sums.data() + c))
                .store(sums.data() + c);
          }
        }
      }

      for (int64_t h = 0; h < heads; ++h) {
        const Vec inverse(1.f / (1.f + denom[h]));
        for (int64_t c = h * dims; c < (h + 1) * dims; c += kLanes) {
          const int64_t offset = row * channels + c;
          ((Vec::loadu(out0_data + offset) + Vec::loadu(sums.data() + c)) * inverse).store(out_data + offset);
        }
        lse_data[row * heads + h] = lse0_data[row * heads + h] + std::log1p(denom[h]);
      }
    }
  });
  return {out, lse, logits};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("window_forward", &window_forward,
        "The biased output, log-sum-exp and window logits from the unbiased ones");
  m.attr("lanes") = kLanes;
}
