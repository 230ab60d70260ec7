#include "fused_layer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "mlx/utils.h"
#include "vec16.h"


namespace exo {

namespace {

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("exo fused layer: " + what);
}

using vec::f16x;

// a . b in sixteen partial sums (a single running sum would be a chain of dependent adds, one per element).
EXO_VEC_INLINE float dot16(const float* a, const float* b, int n) {
  f16x acc = {};
  int i = 0;
  for (; i + 16 <= n; i += 16) acc += vec::load(a + i) * vec::load(b + i);
  float s = vec::sum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

bool wide_registers() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");  // the clone target_clones picks, too
  return avx512;
#else
  return false;
#endif
}

// scores[t] = q . keys[t] for t in [first, last), keys `stride` floats apart: four keys at a time, whose products
// run side by side (one at a time, each waits for the last). Every score is summed as dot16 sums it, so a row's
// scores do not depend on where its keys fall in the blocks (of 16, of 4 or alone).
EXO_CLONES void scores_of(const float* q, const float* keys, int64_t stride, int first, int last, int hd, float* scores) {
  const int whole = hd - hd % 16;
  int t = first;
  // Sixteen keys at a time where 16 accumulators fit in registers (AVX-512; narrower clones would spill them):
  // their sums reduced together (vec::sums), not each alone, which was most of a score's cost at 64 dimensions.
  const bool wide = wide_registers();
  for (; wide && t + 16 <= last; t += 16) {
    f16x acc[16] = {};
    for (int i = 0; i < whole; i += 16) {
      const f16x qi = vec::load(q + i);
      for (int r = 0; r < 16; ++r) acc[r] += qi * vec::load(keys + (t + r) * stride + i);
    }
    float s[16];
    const f16x all = vec::sums(acc);
    __builtin_memcpy(s, &all, sizeof s);
    for (int r = 0; r < 16; ++r) {
      const float* k = keys + (t + r) * stride;
      for (int i = whole; i < hd; ++i) s[r] += q[i] * k[i];
      scores[t + r] = s[r];
    }
  }
  for (; t + 4 <= last; t += 4) {
    const float* k[4] = {keys + t * stride, keys + (t + 1) * stride, keys + (t + 2) * stride, keys + (t + 3) * stride};
    f16x acc[4] = {};
    for (int i = 0; i < whole; i += 16) {
      const f16x qi = vec::load(q + i);
      for (int r = 0; r < 4; ++r) acc[r] += qi * vec::load(k[r] + i);
    }
    for (int r = 0; r < 4; ++r) {
      float s = vec::sum(acc[r]);
      for (int i = whole; i < hd; ++i) s += q[i] * k[r][i];
      scores[t + r] = s;
    }
  }
  for (; t < last; ++t) scores[t] = dot16(q, keys + t * stride, hd);
}

// out += sum over t in [first, last) of w[t] * values[t], each element summed in t's order; 64 elements at a time
// held in registers across every t (one value at a time, out went to memory and back for each).
EXO_CLONES void weighted_sum(const float* w, const float* values, int64_t stride, int first, int last, int hd, float* out) {
  int c = 0;
  for (; c + 64 <= hd; c += 64) {
    f16x acc[4] = {vec::load(out + c), vec::load(out + c + 16), vec::load(out + c + 32), vec::load(out + c + 48)};
    for (int t = first; t < last; ++t) {
      const float* v = values + t * stride + c;
      for (int r = 0; r < 4; ++r) acc[r] += w[t] * vec::load(v + 16 * r);
    }
    __builtin_memcpy(out + c, acc, sizeof acc);
  }
  for (int t = first; t < last; ++t)
    for (int i = c; i < hd; ++i) out[i] += w[t] * values[t * stride + i];
}

EXO_CLONES void rms_norm(const float* x, const float* w, float eps, int n, float* out) {
  float ss = 0.f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / n + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

// A row's rotation at `position`: cos and sin of theta = position * inverse frequency, per dimension, made once
// and shared by all its heads (the trigonometry was a cost of its own at 8 rows: 12 heads x 64 dims a layer).
struct Rotation {
  std::vector<float> cos, sin;
  void set(const float* inv_freqs, float position, int hd) {
    cos.resize(hd), sin.resize(hd);
    for (int i = 0; i < hd; ++i) cos[i] = std::cos(position * inv_freqs[i]), sin[i] = std::sin(position * inv_freqs[i]);
  }
};

// One head of one row rotated in place: x * cos + rotated(x) * sin.
void rope(float* x, const Rotation& r, int hd, bool traditional) {
  const int half = hd / 2;
  for (int i = 0; i < half; ++i) {
    const int a = traditional ? 2 * i : i, b = traditional ? 2 * i + 1 : i + half;
    const float xa = x[a], xb = x[b];
    x[a] = xa * r.cos[a] + -xb * r.sin[a];
    x[b] = xb * r.cos[b] + xa * r.sin[b];
  }
}

QWeights triple(const std::vector<mx::array>& ws, int i, const LayerShape& s) {
  for (int j = 0; j < 3; ++j) check(ws[3 * i + j].flags().row_contiguous, "weights must be contiguous");
  return qweights(ws[3 * i], ws[3 * i + 1], ws[3 * i + 2], s.group_size, s.bits);
}

// Element (b, h, s, 0) of a (B, H, S, hd) array with unit stride in its last axis.
inline const float* at4(const mx::array& a, int b, int h, int s) {
  const auto& st = a.strides();
  return a.data<float>() + (int64_t)b * st[0] + (int64_t)h * st[1] + (int64_t)s * st[2];
}

// Row r of a (B, H, L, hd) array (r = b * L + l, head h) as a pointer: outputs are written in the caches' layout.
inline float* head_row(float* a, int H, int L, int r, int h, int hd) {
  const int b = r / L, l = r % L;
  return a + (((size_t)b * H + h) * L + l) * hd;
}

void run_attention_in(const std::vector<mx::array>& in, std::vector<mx::array>& out, const LayerShape& s) {
  // in: x, norm, wq sq bq, wk sk bk, wv sv bv, inv_freqs, positions
  const mx::array& x = in[0];
  const int D = x.shape(-1), L = x.shape(1), R = (int)(x.size() / D), hd = s.head_dim;
  std::vector<float> x_copy, xn((size_t)R * D);
  const float* xs = contiguous_rows(x, x_copy);
  const float* nw = in[1].data<float>();
  for (int r = 0; r < R; ++r) rms_norm(xs + (size_t)r * D, nw, s.eps, D, xn.data() + (size_t)r * D);
  QuantizedActs acts;
  acts.set(xn.data(), R, D, s.bits);
  const std::vector<mx::array> ws(in.begin() + 2, in.begin() + 11);
  // One row per sequence: the products' (B, H * hd) rows are already (B, H, 1, hd). More: through a scratch, then
  // each head's row to its place in (B, H, L, hd).
  std::vector<float> rows;
  for (int i = 0; i < 3; ++i) {
    const int heads = i == 0 ? s.n_heads : s.n_kv_heads;
    float* o = out[i].data<float>();
    if (L == 1) {
      matvec_quantized(acts, triple(ws, i, s), o);
      continue;
    }
    rows.resize((size_t)R * heads * hd);
    matvec_quantized(acts, triple(ws, i, s), rows.data());
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < heads; ++h)
        std::copy_n(rows.data() + ((size_t)r * heads + h) * hd, hd, head_row(o, heads, L, r, h, hd));
  }
  const float* inv = in[11].data<float>();
  const int32_t* pos = in[12].data<int32_t>();
  Rotation rot;
  for (int r = 0; r < R; ++r) {
    rot.set(inv, (float)(pos[r / L] + r % L), hd);  // a sequence's rows from its position on
    for (int h = 0; h < s.n_heads; ++h) rope(head_row(out[0].data<float>(), s.n_heads, L, r, h, hd), rot, hd, s.traditional);
    for (int h = 0; h < s.n_kv_heads; ++h) rope(head_row(out[1].data<float>(), s.n_kv_heads, L, r, h, hd), rot, hd, s.traditional);
  }
}

void run_attention_out(const std::vector<mx::array>& in, std::vector<mx::array>& out, const LayerShape& s, float scale) {
  // in: h, q, keys, values, starts, wo so bo, wg sg bg, wu su bu, wd sd bd, norm
  const mx::array &h = in[0], &q = in[1], &keys = in[2], &values = in[3];
  const int D = h.shape(-1), L = h.shape(1), R = (int)(h.size() / D), hd = s.head_dim, H = s.n_heads, S = keys.shape(2);
  const int per_kv = H / s.n_kv_heads;
  const int32_t* starts = in[4].data<int32_t>();
  std::vector<float> h_copy, q_copy;
  const float* hs = contiguous_rows(h, h_copy);
  const float* qs = contiguous_rows(q, q_copy);  // (B, H, L, hd)
  std::vector<float> att((size_t)R * H * hd, 0.f), scores(std::max(S, 1)), qh(hd);
  for (int r = 0; r < R; ++r) {
    // Row l of a sequence's L new ones sees the keys up to its own (causal): the cache ends with the L new keys.
    const int b = r / L, last = std::clamp(S - L + r % L + 1, 0, S), first = std::clamp(starts[b], 0, last);
    for (int head = 0; head < H; ++head) {
      const int kv = head / per_kv;
      const float* qv = qs + (((size_t)b * H + head) * L + r % L) * hd;
      for (int i = 0; i < hd; ++i) qh[i] = qv[i] * scale;  // MLX scales the queries before the product
      scores_of(qh.data(), at4(keys, b, kv, 0), keys.strides()[2], first, last, hd, scores.data());
      float mx_score = -INFINITY;
      for (int t = first; t < last; ++t) mx_score = std::max(mx_score, scores[t]);
      float total = 0.f;
      for (int t = first; t < last; ++t) total += (scores[t] = std::exp(scores[t] - mx_score));
      float* o = att.data() + ((size_t)r * H + head) * hd;
      if (total > 0.f) {
        for (int t = first; t < last; ++t) scores[t] /= total;
        weighted_sum(scores.data(), at4(values, b, kv, 0), values.strides()[2], first, last, hd, o);
      }
    }
  }
  const std::vector<mx::array> ws(in.begin() + 5, in.begin() + 17);
  QuantizedActs acts;
  acts.set(att.data(), R, H * hd, s.bits);
  float* y = out[0].data<float>();
  matvec_quantized(acts, triple(ws, 0, s), y);  // o projection
  for (size_t i = 0; i < (size_t)R * D; ++i) y[i] += hs[i];  // h2 = h + attention
  const float* nw = in[17].data<float>();
  std::vector<float> hn((size_t)R * D);
  for (int r = 0; r < R; ++r) rms_norm(y + (size_t)r * D, nw, s.eps, D, hn.data() + (size_t)r * D);
  const QWeights gate = triple(ws, 1, s), up = triple(ws, 2, s), down = triple(ws, 3, s);
  const int F = gate.N;
  std::vector<float> g((size_t)R * F), u((size_t)R * F), d((size_t)R * D);
  acts.set(hn.data(), R, D, s.bits);
  matvec_quantized(acts, gate, g.data());
  matvec_quantized(acts, up, u.data());
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] * (1.f / (1.f + std::exp(-g[i]))) * u[i];  // SiLU(gate) * up
  acts.set(g.data(), R, F, s.bits);
  matvec_quantized(acts, down, d.data());
  for (size_t i = 0; i < (size_t)R * D; ++i) y[i] += d[i];
}

} // namespace

std::vector<mx::array> attention_in(const mx::array& x, const mx::array& norm, const std::vector<mx::array>& qkv,
                                    const mx::array& inv_freqs, const mx::array& positions, const LayerShape& s) {
  check(x.dtype() == mx::float32 && x.ndim() == 3, "x must be float32 (B, L, D)");
  check(qkv.size() == 9, "q, k and v as 9 arrays");
  check(norm.dtype() == mx::float32 && inv_freqs.dtype() == mx::float32, "norm and inv_freqs must be float32");
  check(positions.dtype() == mx::int32 && positions.size() == (size_t)x.shape(0), "one int32 position per row");
  check(inv_freqs.size() == (size_t)s.head_dim, "inv_freqs must hold head_dim values");
  auto stream = mx::to_stream({});
  check(stream.device == mx::Device::cpu, "runs on the CPU only");
  const int B = x.shape(0), L = x.shape(1);
  std::vector<mx::array> inputs = {x, norm};
  inputs.insert(inputs.end(), qkv.begin(), qkv.end());
  inputs.push_back(inv_freqs);
  inputs.push_back(positions);
  return mx::array::make_arrays({{B, s.n_heads, L, s.head_dim}, {B, s.n_kv_heads, L, s.head_dim}, {B, s.n_kv_heads, L, s.head_dim}},
                                {mx::float32, mx::float32, mx::float32}, std::make_shared<AttentionIn>(stream, s), inputs);
}

mx::array attention_out(const mx::array& h, const mx::array& q, const mx::array& keys, const mx::array& values,
                        const mx::array& starts, const std::vector<mx::array>& weights, const mx::array& norm,
                        float scale, const LayerShape& s) {
  check(h.dtype() == mx::float32 && h.ndim() == 3, "h must be float32 (B, L, D)");
  check(q.ndim() == 4 && q.shape(0) == h.shape(0) && q.shape(1) == s.n_heads && q.shape(2) == h.shape(1) && q.shape(3) == s.head_dim,
        "q must be (B, H, L, hd)");
  check(keys.dtype() == mx::float32 && values.dtype() == mx::float32, "the cache must be float32");
  check(keys.ndim() == 4 && keys.shape() == values.shape() && keys.shape(0) == h.shape(0), "keys and values (B, Hkv, S, hd)");
  check(keys.shape(1) == s.n_kv_heads && keys.shape(3) == s.head_dim, "keys and values (B, Hkv, S, hd)");
  check(keys.shape(2) >= h.shape(1), "the cache must hold the L new keys");
  check(starts.dtype() == mx::int32 && starts.size() == (size_t)h.shape(0), "one int32 start per row");
  check(weights.size() == 12, "o, gate, up and down as 12 arrays");
  auto stream = mx::to_stream({});
  check(stream.device == mx::Device::cpu, "runs on the CPU only");
  std::vector<mx::array> inputs = {h, q, keys, values, starts};
  inputs.insert(inputs.end(), weights.begin(), weights.end());
  inputs.push_back(norm);
  return mx::array(h.shape(), mx::float32, std::make_shared<AttentionOut>(stream, s, scale), inputs);
}

void AttentionIn::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  const LayerShape s = shape_;
  dispatch_cpu(stream(), inputs, outputs, [s](std::vector<mx::array>& in, std::vector<mx::array>& out) { run_attention_in(in, out, s); });
}

void AttentionOut::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  for (int i : {2, 3}) check(inputs[i].strides()[3] == 1, "keys and values need unit stride in their last axis");
  const LayerShape s = shape_;
  const float scale = scale_;
  dispatch_cpu(stream(), inputs, outputs,
         [s, scale](std::vector<mx::array>& in, std::vector<mx::array>& out) { run_attention_out(in, out, s, scale); });
}

void AttentionIn::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("exo's fused layer runs on the CPU only");
}

void AttentionOut::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("exo's fused layer runs on the CPU only");
}

} // namespace exo
