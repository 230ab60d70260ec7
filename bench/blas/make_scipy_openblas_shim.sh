#!/bin/sh
# Build libmlxblas_shim.so: un-prefixed BLAS/LAPACK entry points that tail-jump to the
# scipy_-prefixed ones in the PyPI wheel scipy-openblas32 (LP64, pthreads).
# Usage: make_scipy_openblas_shim.sh PYTHON OUTDIR   (needs gcc/cc)
set -e
PY=$1; OUT=$2; mkdir -p "$OUT"
LIBDIR=$($PY -c 'import scipy_openblas32,os;print(scipy_openblas32.get_lib_dir())')
LIBMLX=$($PY -c 'import mlx.core,os;print(os.path.join(os.path.dirname(mlx.core.__file__),"lib","libmlx.so"))')
S="$OUT/shim.S"; : > "$S"
for s in $(nm -D --undefined-only "$LIBMLX" | awk '$1=="U" && ($2 ~ /^cblas_/ || $2 ~ /_$/){print $2}'); do
  printf '.globl %s\n.type %s,@function\n%s:\n  jmp scipy_%s@PLT\n' "$s" "$s" "$s" "$s" >> "$S"
done
printf '.section .note.GNU-stack,"",@progbits\n' >> "$S"
cc -shared -fPIC -o "$OUT/libmlxblas_shim.so" "$S" -L"$LIBDIR" -lscipy_openblas -Wl,-rpath,"$LIBDIR"
echo "$OUT/libmlxblas_shim.so"
