"""Does an RTLD_GLOBAL dlopen of OpenBLAS still take effect if done AFTER `import mlx.core`?
Usage: python order_test.py none|before|after|after-call"""
import ctypes, sys, time
mode = sys.argv[1]
LIB = "libopenblas.so.0"
if mode == "before":
    ctypes.CDLL(LIB, mode=ctypes.RTLD_GLOBAL)
import mlx.core as mx
a = mx.random.normal((768, 768)); mx.eval(a)
if mode == "after-call":
    mx.eval(a @ a)  # first BLAS call binds the PLT slot to the bundled lib
if mode.startswith("after"):
    ctypes.CDLL(LIB, mode=ctypes.RTLD_GLOBAL)
t = time.process_time(); mx.eval(a @ a); mx.eval(a @ a); print(mode, "cpu s for 2x 768^3 sgemm:", round(time.process_time() - t, 3))
