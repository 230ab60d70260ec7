"""Which library will serve mlx's cblas_sgemm in *this* process?
Run after the runner's BLAS set-up (LD_PRELOAD or RTLD_GLOBAL dlopen), before or after importing mlx.
Prints the file that defines cblas_sgemm in the global scope (what libmlx binds to first);
'bundled' means none there, so libmlx falls back to its own NEEDED libblas-*.so (reference BLAS)."""
import ctypes, ctypes.util, sys

class DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

def cblas_provider():
    libdl = ctypes.CDLL(None)                       # global scope of the process
    try:
        fn = libdl.cblas_sgemm
    except AttributeError:
        return "bundled"
    info = DlInfo()
    ctypes.CDLL(ctypes.util.find_library("c")).dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info))
    return info.dli_fname.decode()

def maps_blas(pid="self"):
    names = {l.split()[-1] for l in open(f"/proc/{pid}/maps") if "/" in l}
    return sorted(n for n in names if any(k in n.rsplit("/", 1)[-1] for k in ("openblas", "blas-", "mkl_rt", "shim")))

if __name__ == "__main__":
    for lib in sys.argv[1:]:
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    import mlx.core  # noqa: F401
    print("cblas_sgemm from:", cblas_provider())
    print("mapped:", maps_blas())
