#include "qmv.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/utils.h"
#include "pool.h"
#include "qmv_kernels.h"

namespace exo {

namespace {

Isa detect_best() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::avx512vnni;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::avx2;
  }
#endif
  return Isa::scalar;
}

const char* kIsaNames[] = {"scalar", "avx2", "avx512vnni"};

Isa parse_isa(const std::string& name) {
  for (int i = 0; i < 3; ++i) {
    if (name == kIsaNames[i]) return static_cast<Isa>(i);
  }
  throw std::invalid_argument("unknown kernel ISA '" + name + "' (scalar, avx2 or avx512vnni)");
}

const Isa kBest = detect_best();

Isa initial_isa() {
  const char* env = std::getenv("EXO_KERNEL_ISA");
  if (env == nullptr || *env == 0) return kBest;
  try {
    return std::min(parse_isa(env), kBest);
  } catch (const std::invalid_argument&) {  // the Python side reports a bad value; never fail at load
    return kBest;
  }
}

std::atomic<int> g_isa{static_cast<int>(initial_isa())};

// The pool's size from EXO_KERNEL_THREADS, once, before the first call or the first set_threads.
Pool& pool() {
  static const bool ready = [] {
    const char* env = std::getenv("EXO_KERNEL_THREADS");
    Pool::get().set_threads(env ? std::atoi(env) : 1);
    return true;
  }();
  (void)ready;
  return Pool::get();
}

using RowsFn = void (*)(const QWeights&, const QuantX&, int, float*, int, int);

RowsFn rows_fn(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::avx512vnni) return rows_avx512vnni;
  if (isa == Isa::avx2) return rows_avx2;
#endif
  return rows_scalar;
}

} // namespace

// x rows as one contiguous float buffer (a copy only when x is strided).
const float* contiguous_rows(const mx::array& x, std::vector<float>& scratch) {
  if (x.flags().row_contiguous) return x.data<float>();
  scratch.resize(x.size());
  const float* base = x.data<float>();
  const int nd = x.ndim();
  std::vector<int> idx(nd, 0);
  for (size_t i = 0; i < x.size(); ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[d] * x.strides()[d];
    scratch[i] = base[off];
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < x.shape(d)) break;
      idx[d] = 0;
    }
  }
  return scratch.data();
}

namespace {

// Fewer weights than this per call: one thread (waking a worker costs more than it saves).
constexpr int64_t kMinWeightsPerThread = 64 * 1024;

} // namespace

QWeights qweights(const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size, int bits) {
  return QWeights{w.data<uint8_t>(), scales.data<void>(), biases.data<void>(), scales.dtype() == mx::float16,
                  (int)w.shape(0), (int)(w.shape(1) * 32 / bits), group_size, bits};
}

void QuantizedActs::set(const float* x, int rows, int k, int b) {
  M = rows, K = k, bits = b;
  q.resize((size_t)M * K);
  d.resize((size_t)M * (K / kBlock));
  sum.resize((size_t)M * (K / kBlock));
  quantize_x(x, M, K, bits, q.data(), d.data(), sum.data());
}

void matvec_quantized(const QuantizedActs& a, const QWeights& qw, float* y) {
  const int N = qw.N, K = qw.K, nb = K / kBlock;
  const RowsFn fn = rows_fn(static_cast<Isa>(g_isa.load()));
  Pool& pool = exo::pool();
  const int tasks = (int)std::max<int64_t>(1, std::min<int64_t>(pool.threads(), (int64_t)N * K / kMinWeightsPerThread));
  for (int m0 = 0; m0 < a.M; m0 += kMaxBatch) {
    const int B = std::min(kMaxBatch, a.M - m0);
    const QuantX qx{a.q.data() + (size_t)m0 * K, a.d.data() + (size_t)m0 * nb, a.sum.data() + (size_t)m0 * nb};
    float* ym = y + (size_t)m0 * N;
    pool.run(tasks, [&](int t) {
      // Row ranges in multiples of 16: threads share no output cache line, and each range is whole tiles of the
      // AVX-512 form (qmv_vnni.cpp).
      const int n0 = (int)((int64_t)N * t / tasks) & ~15, n1 = t + 1 == tasks ? N : (int)((int64_t)N * (t + 1) / tasks) & ~15;
      fn(qw, qx, B, ym, n0, n1);
    });
  }
}

namespace {

void run(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases, mx::array& out,
         int group_size, int bits) {
  thread_local std::vector<float> x_copy;
  thread_local QuantizedActs acts;
  const int K = x.shape(-1), M = (int)(x.size() / K);
  acts.set(contiguous_rows(x, x_copy), M, K, bits);
  matvec_quantized(acts, qweights(w, scales, biases, group_size, bits), out.data<float>());
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("exo quantized_matvec: " + what);
}

} // namespace

mx::array quantized_matvec(
    const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size, int bits) {
  check(bits == 4 || bits == 8, "bits must be 4 or 8, not " + std::to_string(bits));
  check(group_size == 32 || group_size == 64 || group_size == 128, "group_size must be 32, 64 or 128");
  check(x.dtype() == mx::float32, "x must be float32");
  check(x.ndim() >= 1, "x must have at least one dimension");
  check(w.dtype() == mx::uint32 && w.ndim() == 2, "w must be a 2-D uint32 array (MLX's quantized layout)");
  const int K = w.shape(1) * 32 / bits, N = w.shape(0);
  check(x.shape(-1) == K, "x has " + std::to_string(x.shape(-1)) + " columns, w holds " + std::to_string(K));
  check(K % group_size == 0, "K must be a multiple of the group size");
  for (const auto* p : {&scales, &biases}) {
    check(p->dtype() == mx::float32 || p->dtype() == mx::float16, "scales and biases must be float32 or float16");
    check(p->ndim() == 2 && p->shape(0) == N && p->shape(1) == K / group_size, "scales/biases must be (N, K / group_size)");
  }
  check(scales.dtype() == biases.dtype(), "scales and biases must have the same dtype");
  auto stream = mx::to_stream({});
  check(stream.device == mx::Device::cpu, "runs on the CPU only (use mx.quantized_matmul on a GPU)");
  auto shape = x.shape();
  shape.back() = N;
  return mx::array(shape, mx::float32, std::make_shared<QuantizedMatVec>(stream, group_size, bits), {x, w, scales, biases});
}

void dispatch_cpu(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                  std::function<void(std::vector<mx::array>&, std::vector<mx::array>&)> work) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) encoder.set_input_array(in);
  for (auto& out : outputs) encoder.set_output_array(out);
  std::vector<mx::array> ins, outs;
  for (const auto& in : inputs) ins.push_back(mx::array::unsafe_weak_copy(in));
  for (const auto& out : outputs) outs.push_back(mx::array::unsafe_weak_copy(out));
  encoder.dispatch([ins = std::move(ins), outs = std::move(outs), work = std::move(work)]() mutable { work(ins, outs); });
}

void QuantizedMatVec::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  for (int i = 1; i < 4; ++i) {
    check(inputs[i].flags().row_contiguous, "w, scales and biases must be contiguous");
  }
  dispatch_cpu(stream(), inputs, outputs, [gs = group_size_, bits = bits_](auto& in, auto& out) {
    run(in[0], in[1], in[2], in[3], out[0], gs, bits);
  });
}

void QuantizedMatVec::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("exo quantized_matvec runs on the CPU only");
}

bool QuantizedMatVec::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const QuantizedMatVec&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_;
}

std::string isa_name() { return kIsaNames[g_isa.load()]; }
std::string best_isa_name() { return kIsaNames[static_cast<int>(kBest)]; }
void set_isa(const std::string& name) { g_isa = static_cast<int>(std::min(parse_isa(name), kBest)); }
int threads() { return pool().threads(); }
void set_threads(int n) { pool().set_threads(n); }

} // namespace exo
