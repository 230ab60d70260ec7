#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "qmv.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_exo_kernels, m) {
  m.doc() = "exo's CPU kernels for MLX: a quantized matrix-vector product with int8 dot products";
  m.def("quantized_matvec", &exo::quantized_matvec, "x"_a, "w"_a, "scales"_a, "biases"_a, "group_size"_a, "bits"_a,
        "x (..., K) float32 times the MLX-quantized w (N, K*bits/32) transposed: (..., N) float32");
  m.def("isa", &exo::isa_name, "the kernel in use: scalar, avx2 or avx512vnni");
  m.def("best_isa", &exo::best_isa_name, "the best kernel this CPU supports");
  m.def("set_isa", &exo::set_isa, "name"_a, "use this kernel (at most the best supported)");
  m.def("threads", &exo::threads, "threads per call, the calling one included");
  m.def("set_threads", &exo::set_threads, "n"_a);
}
