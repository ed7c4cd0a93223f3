// The CPU kernels of the window attentions (window_attention.py), built at first use for
// the machine's ATen CPU capability (AVX-512, AVX2).
//
// Query-major, float32, one pass per query over its window keys (parallel over queries):
// - window_forward, window_backward: attn_impl='window', the corrections of the fused
//   attention without bias on each query's window keys (docs/window-attention.md);
// - local_forward, local_backward: the weight generator's softmax over the window keys
//   only, keys shared by the heads.
// The rows of a query's window lie scattered over the memory, so the hardware prefetcher
// cannot guess them: the rows of the key four slots ahead are prefetched.
//
// Key-major, float32 and float64: key_major_pattern, key_sums: the gradients that land on
// keys, as sums over each key's window entries (a sparse matrix, keys x entries, in CSR
// form). An entry carries all heads: it reads one block of the query's row and of its
// window weights, and adds to one block of the key's gradient, written in place.

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
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kPrefetchAhead = 4;  // keys; 2 and 8 were slower at 800x320

// The rows of a query's window: key w of the window of query `query` (b * Q + q) is row
// index[b, q, w] of rows [B, N, C].
struct WindowRows {
  const float* first;
  const int64_t* keys;
  int64_t width, channels;

  WindowRows(const at::Tensor& rows, const at::Tensor& index, int64_t query)
      : first(rows.data_ptr<float>() + query / index.size(1) * rows.size(1) * rows.size(2)),
        keys(index.data_ptr<int64_t>() + query * index.size(2)),
        width(index.size(2)),
        channels(rows.size(2)) {}

  const float* row(int64_t w) const { return first + keys[w] * channels; }
  void prefetch_ahead(int64_t w) const {
    if (w + kPrefetchAhead >= width) return;
    const float* ahead = row(w + kPrefetchAhead);
    for (int64_t c = 0; c < channels; c += 64 / sizeof(float)) __builtin_prefetch(ahead + c);
  }
};

// n is a multiple of kLanes (kernel_applies in window_attention.py).
float dot(const float* a, const float* b, int64_t n) {
  Vec sum = Vec::loadu(a) * Vec::loadu(b);
  for (int64_t c = kLanes; c < n; c += kLanes) sum = at::vec::fmadd(Vec::loadu(a + c), Vec::loadu(b + c), sum);
  return sum.reduce_add();
}

void add_scaled(float weight, const float* x, float* y, int64_t n) {
  const Vec w(weight);
  for (int64_t c = 0; c < n; c += kLanes) at::vec::fmadd(w, Vec::loadu(x + c), Vec::loadu(y + c)).store(y + c);
}

// exp(values[i] - shift[i % heads]) for a [W, H] block, vectorized over the whole block.
void exp_shifted(const float* values, const float* shift, int64_t heads, int64_t entries,
                 std::vector<float>& pattern, float* result) {
  // shift repeated, so that one vector of it lines up with any kLanes consecutive entries
  pattern.resize(heads + kLanes);
  for (int64_t i = 0; i < heads + kLanes; ++i) pattern[i] = shift[i % heads];
  for (int64_t i = 0; i < entries; i += kLanes) {
    const int64_t n = std::min(kLanes, entries - i);
    (Vec::loadu(values + i, n) - Vec::loadu(pattern.data() + i % heads)).exp_u20().store(result + i, n);
  }
}

void check_float_rows(std::initializer_list<const at::Tensor*> tensors, const char* name) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), name, " takes contiguous float32 tensors");
  }
}

// index [B, Q, W] (and valid, its mask) for q [B, Q, ...] and keys k [B, N, C].
void check_window(const at::Tensor& index, const at::Tensor* valid, const at::Tensor& q,
                  const at::Tensor& k, const char* name) {
  TORCH_CHECK(index.scalar_type() == at::kLong && index.is_contiguous() && index.dim() == 3,
              name, " takes a contiguous int64 index [B, Q, W]");
  TORCH_CHECK(index.size(0) == q.size(0) && index.size(1) == q.size(1) && k.size(0) == q.size(0),
              name, ": the index [B, Q, W] and k [B, N, C] must match q's batch and queries");
  if (valid != nullptr) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->is_contiguous() && valid->sizes() == index.sizes(),
                name, " takes a contiguous bool mask shaped like the index");
  }
}

// q [B, Q, C], k, v [B, N, C] (C = H x D, heads side by side), gain = expm1(bias) (zero
// where no bias) and index [B, Q, W], out0 [B, Q, C] and lse0 [B, Q, H] from the fused kernel
// without bias. Returns the biased output [B, Q, C], its log-sum-exp [B, Q, H] and the
// window logits [B, Q, W, H].
std::vector<at::Tensor> window_forward(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& gain,
                                       const at::Tensor& index, const at::Tensor& out0,
                                       const at::Tensor& lse0, int64_t heads, double scale) {
  check_float_rows({&q, &k, &v, &gain, &out0, &lse0}, "window_forward");
  check_window(index, nullptr, q, k, "window_forward");
  const int64_t batch = q.size(0), queries = q.size(1), channels = q.size(2);
  const int64_t width = index.size(2), dims = channels / heads;
  TORCH_CHECK(dims % kLanes == 0, "window_forward: head width must be a multiple of ", kLanes);
  auto out = at::empty_like(out0);
  auto lse = at::empty_like(lse0);
  auto logits = at::empty({batch, queries, width, heads}, q.options());
  const float* q_data = q.data_ptr<float>();
  const float* gain_data = gain.data_ptr<float>();
  const float* out0_data = out0.data_ptr<float>();
  const float* lse0_data = lse0.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  float* lse_data = lse.data_ptr<float>();
  float* logits_data = logits.data_ptr<float>();
  const float scale_f = static_cast<float>(scale);
  const int64_t entries = width * heads;

  at::parallel_for(0, batch * queries, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> pattern, mass(entries), sums(channels), denom(heads);
    for (int64_t row = begin; row < end; ++row) {
      const WindowRows k_rows(k, index, row), v_rows(v, index, row);
      const float* q_row = q_data + row * channels;
      const float* row_gain = gain_data + row * width;
      float* row_logits = logits_data + row * entries;

      for (int64_t w = 0; w < width; ++w) {
        k_rows.prefetch_ahead(w);
        for (int64_t h = 0; h < heads; ++h) {
          row_logits[w * heads + h] = dot(q_row + h * dims, k_rows.row(w) + h * dims, dims) * scale_f;
        }
      }
      exp_shifted(row_logits, lse0_data + row * heads, heads, entries, pattern, mass.data());

      std::fill(sums.begin(), sums.end(), 0.f);
      std::fill(denom.begin(), denom.end(), 0.f);
      for (int64_t w = 0; w < width; ++w) {
        v_rows.prefetch_ahead(w);
        if (row_gain[w] == 0.f) continue;  // outside the map, or no bias: no correction
        for (int64_t h = 0; h < heads; ++h) {
          const float extra = row_gain[w] * mass[w * heads + h];
          denom[h] += extra;
          add_scaled(extra, v_rows.row(w) + h * dims, sums.data() + h * dims, dims);
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

// The window keys' share of the gradients, given the fused backward's grad_q [B, Q, C]
// (corrected in place): the forward's tensors, valid [B, Q, W], the biased output and
// log-sum-exp and grad_out [B, Q, C]. Returns grad_bias [B, Q, W] (summed over the heads)
// and, per entry [B, Q, W, H], the weights of the corrections that land on keys: on q's
// rows (dl/dk) and on grad_out's (dl/dv).
std::vector<at::Tensor> window_backward(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const at::Tensor& gain,
                                        const at::Tensor& index, const at::Tensor& valid,
                                        const at::Tensor& logits, const at::Tensor& out,
                                        const at::Tensor& lse, const at::Tensor& grad_out,
                                        at::Tensor& grad_q, int64_t heads, double scale) {
  check_float_rows({&q, &k, &v, &gain, &logits, &out, &lse, &grad_out, &grad_q}, "window_backward");
  check_window(index, &valid, q, k, "window_backward");
  const int64_t batch = q.size(0), queries = q.size(1), channels = q.size(2);
  const int64_t width = index.size(2), dims = channels / heads;
  TORCH_CHECK(dims % kLanes == 0, "window_backward: head width must be a multiple of ", kLanes);
  auto grad_bias = at::empty({batch, queries, width}, q.options());
  auto missing_logits = at::empty({batch, queries, width, heads}, q.options());
  auto missing_p = at::empty({batch, queries, width, heads}, q.options());
  const float* gain_data = gain.data_ptr<float>();
  const bool* valid_data = valid.data_ptr<bool>();
  const float scale_f = static_cast<float>(scale);
  const int64_t entries = width * heads;

  at::parallel_for(0, batch * queries, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> pattern, fused_p(entries), row_dot(heads);
    for (int64_t row = begin; row < end; ++row) {
      const WindowRows k_rows(k, index, row), v_rows(v, index, row);
      const float* go_row = grad_out.data_ptr<float>() + row * channels;
      const float* out_row = out.data_ptr<float>() + row * channels;
      float* grad_q_row = grad_q.data_ptr<float>() + row * channels;
      const float* row_gain = gain_data + row * width;
      const bool* row_valid = valid_data + row * width;
      float* row_grad_bias = grad_bias.data_ptr<float>() + row * width;
      float* row_missing_logits = missing_logits.data_ptr<float>() + row * entries;
      float* row_missing_p = missing_p.data_ptr<float>() + row * entries;

      for (int64_t h = 0; h < heads; ++h) row_dot[h] = dot(go_row + h * dims, out_row + h * dims, dims);
      exp_shifted(logits.data_ptr<float>() + row * entries, lse.data_ptr<float>() + row * heads, heads,
                  entries, pattern, fused_p.data());
      for (int64_t w = 0; w < width; ++w) {
        v_rows.prefetch_ahead(w);
        k_rows.prefetch_ahead(w);
        float bias_grad = 0.f;
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t e = w * heads + h;
          if (!row_valid[w]) {  // a cell outside the map: in no sum
            row_missing_logits[e] = row_missing_p[e] = 0.f;
            continue;
          }
          const float grad_p = dot(go_row + h * dims, v_rows.row(w) + h * dims, dims) - row_dot[h];
          const float missing = fused_p[e] * row_gain[w];  // what the fused backward left out
          bias_grad += (fused_p[e] + missing) * grad_p;
          row_missing_p[e] = missing;
          row_missing_logits[e] = missing * grad_p * scale_f;
          if (missing != 0.f) add_scaled(row_missing_logits[e], k_rows.row(w) + h * dims, grad_q_row + h * dims, dims);
        }
        row_grad_bias[w] = bias_grad;
      }
    }
  });
  return {grad_bias, missing_logits, missing_p};
}

// Softmax over each query's valid window keys only, keys shared by the heads: q [B, Q, H x C]
// (scaled), k, v [B, N, C], index and valid [B, Q, W] (every query has a valid key).
// Returns the output [B, Q, H x C] and the probabilities [B, Q, W, H].
std::vector<at::Tensor> local_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& index, const at::Tensor& valid, int64_t heads) {
  check_float_rows({&q, &k, &v}, "local_forward");
  check_window(index, &valid, q, k, "local_forward");
  const int64_t batch = q.size(0), queries = q.size(1), channels = k.size(2);
  TORCH_CHECK(q.size(2) == heads * channels, "local_forward: q rows must hold ", heads, " heads of ", channels);
  const int64_t width = index.size(2), entries = width * heads;
  TORCH_CHECK(channels % kLanes == 0, "local_forward: the width must be a multiple of ", kLanes);
  auto out = at::empty_like(q);
  auto p = at::empty({batch, queries, width, heads}, q.options());
  const bool* valid_data = valid.data_ptr<bool>();
  constexpr float kMasked = -std::numeric_limits<float>::infinity();

  at::parallel_for(0, batch * queries, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> pattern, highest(heads), total(heads);
    for (int64_t row = begin; row < end; ++row) {
      const WindowRows k_rows(k, index, row), v_rows(v, index, row);
      const float* q_row = q.data_ptr<float>() + row * heads * channels;
      const bool* row_valid = valid_data + row * width;
      float* row_p = p.data_ptr<float>() + row * entries;
      float* out_row = out.data_ptr<float>() + row * heads * channels;

      std::fill(highest.begin(), highest.end(), kMasked);
      for (int64_t w = 0; w < width; ++w) {
        k_rows.prefetch_ahead(w);
        for (int64_t h = 0; h < heads; ++h) {
          const float logit = row_valid[w] ? dot(q_row + h * channels, k_rows.row(w), channels) : kMasked;
          row_p[w * heads + h] = logit;
          highest[h] = std::max(highest[h], logit);
        }
      }
      exp_shifted(row_p, highest.data(), heads, entries, pattern, row_p);
      std::fill(total.begin(), total.end(), 0.f);
      for (int64_t e = 0; e < entries; ++e) total[e % heads] += row_p[e];
      for (int64_t e = 0; e < entries; ++e) row_p[e] /= total[e % heads];

      std::fill(out_row, out_row + heads * channels, 0.f);
      for (int64_t w = 0; w < width; ++w) {
        v_rows.prefetch_ahead(w);
        if (!row_valid[w]) continue;
        for (int64_t h = 0; h < heads; ++h) {
          add_scaled(row_p[w * heads + h], v_rows.row(w), out_row + h * channels, channels);
        }
      }
    }
  });
  return {out, p};
}

// local_forward's backward: grad_q [B, Q, H x C] and the logits' gradient [B, Q, W, H] (the
// weights of dl/dk on q's rows; those of dl/dv are the probabilities, on grad_out's).
std::vector<at::Tensor> local_backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& index, const at::Tensor& valid,
                                       const at::Tensor& p, const at::Tensor& out,
                                       const at::Tensor& grad_out, int64_t heads) {
  check_float_rows({&q, &k, &v, &p, &out, &grad_out}, "local_backward");
  check_window(index, &valid, q, k, "local_backward");
  const int64_t batch = q.size(0), queries = q.size(1), channels = k.size(2);
  TORCH_CHECK(q.size(2) == heads * channels, "local_backward: q rows must hold ", heads, " heads of ", channels);
  const int64_t width = index.size(2), entries = width * heads;
  TORCH_CHECK(channels % kLanes == 0, "local_backward: the width must be a multiple of ", kLanes);
  auto grad_q = at::zeros_like(q);
  auto grad_logits = at::empty_like(p);
  const bool* valid_data = valid.data_ptr<bool>();

  at::parallel_for(0, batch * queries, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> row_dot(heads);
    for (int64_t row = begin; row < end; ++row) {
      const WindowRows k_rows(k, index, row), v_rows(v, index, row);
      const float* go_row = grad_out.data_ptr<float>() + row * heads * channels;
      const float* out_row = out.data_ptr<float>() + row * heads * channels;
      const float* row_p = p.data_ptr<float>() + row * entries;
      const bool* row_valid = valid_data + row * width;
      float* grad_q_row = grad_q.data_ptr<float>() + row * heads * channels;
      float* row_grad_logits = grad_logits.data_ptr<float>() + row * entries;

      for (int64_t h = 0; h < heads; ++h) {
        row_dot[h] = dot(go_row + h * channels, out_row + h * channels, channels);
      }
      for (int64_t w = 0; w < width; ++w) {
        v_rows.prefetch_ahead(w);
        k_rows.prefetch_ahead(w);
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t e = w * heads + h;
          if (!row_valid[w]) {
            row_grad_logits[e] = 0.f;
            continue;
          }
          const float grad_p = dot(go_row + h * channels, v_rows.row(w), channels) - row_dot[h];
          row_grad_logits[e] = row_p[e] * grad_p;
          add_scaled(row_grad_logits[e], k_rows.row(w), grad_q_row + h * channels, channels);
        }
      }
    }
  });
  return {grad_q, grad_logits};
}

// Each key's window entries (b, q, w) as CSR rows over the keys (b, n): crow [B * N + 1],
// and per entry its query row b * Q + q and its place b * Q * W + q * W + w, in a counting
// sort (one pass to count, one to place) that keeps each key's entries in (q, w) order.
std::vector<at::Tensor> key_major_pattern(const at::Tensor& index, int64_t tokens) {
  TORCH_CHECK(index.scalar_type() == at::kLong && index.is_contiguous() && index.dim() == 3,
              "key_major_pattern takes a contiguous int64 index [B, Q, W]");
  const int64_t batch = index.size(0), entries = index.size(1) * index.size(2);
  const int64_t width = index.size(2), total = batch * entries;
  TORCH_CHECK(total < (int64_t(1) << 31) && batch * tokens < (int64_t(1) << 31),
              "key_major_pattern: too many window entries or tokens for int32");
  const int64_t* keys = index.data_ptr<int64_t>();
  auto crow = at::zeros({batch * tokens + 1}, index.options().dtype(at::kInt));
  auto query = at::empty({total}, crow.options());
  auto entry = at::empty({total}, crow.options());
  int32_t* crow_data = crow.data_ptr<int32_t>();
  for (int64_t i = 0; i < total; ++i) {
    TORCH_CHECK(keys[i] >= 0 && keys[i] < tokens, "key_major_pattern: window key ", keys[i],
                " outside the ", tokens, " tokens");
    crow_data[i / entries * tokens + keys[i] + 1] += 1;
  }
  for (int64_t r = 0; r < batch * tokens; ++r) crow_data[r + 1] += crow_data[r];
  std::vector<int32_t> cursor(crow_data, crow_data + batch * tokens);
  int32_t* query_data = query.data_ptr<int32_t>();
  int32_t* entry_data = entry.data_ptr<int32_t>();
  for (int64_t i = 0; i < total; ++i) {
    const int32_t position = cursor[i / entries * tokens + keys[i]]++;
    query_data[position] = static_cast<int32_t>(i / width);
    entry_data[position] = static_cast<int32_t>(i);
  }
  return {crow, query, entry};
}

// out[b, n] (+)= sum over the key's entries (q, w) of weights[b, q, w, h] * rows[b, q, h]:
// per head (out [B * N, H, D]) or summed over the heads (shared keys: out [B * N, D]).
// rows [B * Q, H, D] and weights [B * Q * W, H] are q's and the window's layouts, so an
// entry reads one contiguous block of each.
template <typename scalar_t>
void key_sums_rows(at::Tensor& out, const at::Tensor& crow, const at::Tensor& query,
                   const at::Tensor& entry, const at::Tensor& weights, const at::Tensor& rows,
                   bool shared, bool accumulate) {
  using V = at::vec::Vectorized<scalar_t>;
  constexpr int64_t lanes = V::size();
  const int64_t heads = rows.size(1), dims = rows.size(2), width = out.size(1);
  const int32_t* crow_data = crow.data_ptr<int32_t>();
  const int32_t* query_data = query.data_ptr<int32_t>();
  const int32_t* entry_data = entry.data_ptr<int32_t>();
  const scalar_t* weight_data = weights.data_ptr<scalar_t>();
  const scalar_t* rows_data = rows.data_ptr<scalar_t>();
  scalar_t* out_data = out.data_ptr<scalar_t>();
  auto fmadd_row = [&](scalar_t weight, const scalar_t* source, scalar_t* target) {
    const V w(weight);
    int64_t c = 0;
    for (; c + lanes <= dims; c += lanes) {
      at::vec::fmadd(w, V::loadu(source + c), V::loadu(target + c)).store(target + c);
    }
    if (c < dims) {
      const int64_t n = dims - c;
      at::vec::fmadd(w, V::loadu(source + c, n), V::loadu(target + c, n)).store(target + c, n);
    }
  };
  at::parallel_for(0, out.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* target = out_data + r * width;
      if (!accumulate) std::fill(target, target + width, scalar_t(0));
      for (int32_t j = crow_data[r]; j < crow_data[r + 1]; ++j) {
        const scalar_t* weight = weight_data + int64_t(entry_data[j]) * heads;
        const scalar_t* source = rows_data + int64_t(query_data[j]) * heads * dims;
        for (int64_t h = 0; h < heads; ++h) {
          fmadd_row(weight[h], source + h * dims, shared ? target : target + h * dims);
        }
      }
    }
  });
}

void key_sums(at::Tensor& out, const at::Tensor& crow, const at::Tensor& query,
              const at::Tensor& entry, const at::Tensor& weights, const at::Tensor& rows,
              bool shared, bool accumulate) {
  TORCH_CHECK(out.is_contiguous() && rows.is_contiguous() && weights.is_contiguous(),
              "key_sums takes contiguous out, rows and weights");
  TORCH_CHECK(out.scalar_type() == rows.scalar_type() && weights.scalar_type() == rows.scalar_type(),
              "key_sums takes out, rows and weights of one dtype");
  TORCH_CHECK(out.dim() == 2 && rows.dim() == 3 && weights.dim() == 2 && weights.size(1) == rows.size(1),
              "key_sums takes out [R, width], rows [M, H, D] and weights [E, H]");
  TORCH_CHECK(crow.numel() == out.size(0) + 1 && out.size(1) == rows.size(2) * (shared ? 1 : rows.size(1)),
              "key_sums: crow must have a row per out row plus one, and out rows of D (shared) or H x D");
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "key_sums", [&] {
    key_sums_rows<scalar_t>(out, crow, query, entry, weights, rows, shared, accumulate);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("window_forward", &window_forward,
        "The biased output, log-sum-exp and window logits from the unbiased ones");
  m.def("window_backward", &window_backward,
        "The window keys' share of the gradients (grad_q corrected in place)");
  m.def("local_forward", &local_forward, "Softmax attention over each query's window keys");
  m.def("local_backward", &local_backward, "local_forward's backward");
  m.def("key_major_pattern", &key_major_pattern, "Each key's window entries (CSR)");
  m.def("key_sums", &key_sums, "Each key's weighted sum of its window entries' query rows, in place");
  m.attr("lanes") = kLanes;
}
