#include "logsumexp.h"

#include <cmath>
#include <stdexcept>

#include "mlx/utils.h"
#include "vec16.h"

namespace exo {

namespace {

EXO_CLONES float row_logsumexp(const float* x, int64_t n) {
  const int64_t whole = n - n % 16;
  vec::f16x m16 = vec::f16x{} - INFINITY;
  for (int64_t i = 0; i < whole; i += 16) {
    const vec::f16x v = vec::load(x + i);
    m16 = v > m16 ? v : m16;
  }
  float m = vec::max(m16);
  for (int64_t i = whole; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (std::isinf(m)) {  // all -inf, or +inf somewhere: that, unless a NaN hides from the comparisons above
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) return NAN;
    }
    return m;
  }
  // A NaN beside finite values: the sum below is NaN.
  vec::f16x s16 = {};
  for (int64_t i = 0; i < whole; i += 16) s16 += vec::exp(vec::load(x + i) - m);
  float s = vec::sum(s16);
  for (int64_t i = whole; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

} // namespace

mx::array logsumexp_rows(const mx::array& x) {
  if (x.dtype() != mx::float32 || x.ndim() < 1 || x.shape(-1) < 1) {
    throw std::invalid_argument("exo logsumexp_rows: x must be float32 (..., V) with V >= 1");
  }
  auto stream = mx::to_stream({});
  if (stream.device != mx::Device::cpu) throw std::invalid_argument("exo logsumexp_rows: runs on the CPU only");
  mx::Shape shape = x.shape();
  shape.back() = 1;
  return mx::array(shape, mx::float32, std::make_shared<LogSumExpRows>(stream), {x});
}

void LogSumExpRows::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  dispatch_cpu(stream(), inputs, outputs, [](std::vector<mx::array>& in, std::vector<mx::array>& out) {
    std::vector<float> scratch;
    const float* x = contiguous_rows(in[0], scratch);
    const int64_t n = in[0].shape(-1), rows = (int64_t)(in[0].size() / n);
    float* y = out[0].data<float>();
    for (int64_t r = 0; r < rows; ++r) y[r] = row_logsumexp(x + r * n, n);
  });
}

void LogSumExpRows::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("exo logsumexp_rows runs on the CPU only");
}

} // namespace exo
