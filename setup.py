"""Build of the C++ extension ``sparsebert._C``.

Each ISA variant of a kernel (``csrc/cpu/*_<isa>.cpp``) is compiled with its own ``-m`` flags
and chosen at run time from the CPU's features (csrc/cpu/isa.cpp); no file is built for the
build machine's own CPU. Per-file flags need the plain (non-ninja) compile path of torch's
BuildExtension, which calls ``compiler._compile`` once per source file.

Build against the installed torch: ``pip install --no-build-isolation -e .`` (``make install``).
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent

# Flags per ISA, matched against the end of the source file name.
AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"]
ISA_FLAGS = {
    "_amx.cpp": AVX512 + ["-mavx512bf16", "-mavx512vnni", "-mamx-tile", "-mamx-bf16", "-mamx-int8"],
    "_avx512vnni.cpp": AVX512 + ["-mavx512vnni"],
    "_avx512bf16.cpp": AVX512 + ["-mavx512bf16"],
    "_avx512.cpp": AVX512,
    "_avx2.cpp": ["-mavx2", "-mfma"],
    "_avxvnni.cpp": ["-mavx2", "-mfma", "-mavxvnni"],
}


def isa_flags(source: str) -> list[str]:
    for suffix, flags in ISA_FLAGS.items():
        if source.endswith(suffix):
            return flags
    return []


class BuildExt(BuildExtension):
    """BuildExtension that adds the ISA flags of each source file to its compile command."""

    def __init__(self, *args, **kwargs):
        kwargs["use_ninja"] = False
        super().__init__(*args, **kwargs)

    def build_extension(self, ext):
        compile_one = self.compiler._compile

        def _compile(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            extra = isa_flags(src)
            if isinstance(extra_postargs, dict):
                extra_postargs = {**extra_postargs, "cxx": list(extra_postargs["cxx"]) + extra}
            else:
                extra_postargs = list(extra_postargs) + extra
            return compile_one(obj, src, ext_, cc_args, extra_postargs, pp_opts)

        self.compiler._compile = _compile
        try:
            super().build_extension(ext)
        finally:
            self.compiler._compile = compile_one


if sys.platform != "linux" or os.uname().machine not in ("x86_64", "AMD64"):
    raise RuntimeError("sparsebert's CPU kernels target x86-64 Linux")

sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
# The headers too: build_ext rebuilds when any of these is newer than the built module (every
# source then, as it does for a changed .cpp), so editing a kernel header is never left unbuilt.
headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h"))
debug = os.environ.get("SPARSEBERT_DEBUG", "") == "1"
# `make sanitize`: AddressSanitizer + UndefinedBehaviorSanitizer, every report fatal. -O1 keeps
# the kernels' vector code (what runs in production) while staying debuggable.
sanitize = os.environ.get("SPARSEBERT_SANITIZE", "") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
if debug:
    cxx_flags = ["-O0", "-g"]
elif sanitize:
    cxx_flags = ["-O1"] + SANITIZE_FLAGS
else:
    cxx_flags = ["-O3"]
cxx_flags += ["-std=c++17", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden"]
link_flags = ["-fopenmp"] + (SANITIZE_FLAGS if sanitize else [])

setup(
    ext_modules=[
        CppExtension(
            "sparsebert._C",
            sources,
            depends=headers,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=False,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
