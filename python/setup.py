"""Packages libzcopy.so (and zcopy.h) inside the zcopy package, so that an installed package or a
wheel finds its library without Rust, a compiler or environment variables.

`pip install ./python` and `pip wheel ./python` run `cargo build --release --lib` at the
repository root when cargo is on PATH (a no-op when the library is up to date), else take the
library already built at target/release/libzcopy.so; with neither they fail, saying so. The
packaged copy is stripped of debug info (the build tree keeps it, for backtraces and profiles).
The library is machine code, so the wheel is tagged for this platform (py3-none-linux_x86_64 on
x86_64 Linux): any Python 3, one architecture.
"""

import os
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools before 70.1: the command lives in the wheel package
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIBRARY = os.path.join(ROOT, "target", "release", "libzcopy.so")


def _built_library():
    """target/release/libzcopy.so, built first with cargo where this is a checkout with cargo."""
    cargo = shutil.which("cargo")
    if cargo and os.path.exists(os.path.join(ROOT, "Cargo.toml")):
        print("zcopy: cargo build --release --lib in %s" % ROOT, flush=True)
        subprocess.run([cargo, "build", "--release", "--lib"], cwd=ROOT, check=True)
    if not os.path.exists(LIBRARY):
        raise SystemExit(
            "zcopy: %s is not built and cargo is not on PATH to build it: install Rust "
            "(https://rustup.rs) or run `cargo build --release --lib` in %s, then install again"
            % (LIBRARY, ROOT)
        )
    return LIBRARY


def _copy_stripped(lib, dest):
    """Copies lib to dest without its debug sections (5.6 MB -> about 0.6 MB)."""
    shutil.copy2(lib, dest)
    for tool in ("strip", "objcopy"):
        path = shutil.which(tool)
        if path:
            subprocess.run([path, "--strip-debug", dest], check=True)
            return
    print("zcopy: warning: neither strip nor objcopy found; packaging %s with its debug info" % lib, flush=True)


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "zcopy")
        os.makedirs(target, exist_ok=True)
        _copy_stripped(_built_library(), os.path.join(target, "libzcopy.so"))
        shutil.copy2(os.path.join(ROOT, "include", "zcopy.h"), os.path.join(target, "zcopy.h"))


class PlatformDistribution(Distribution):
    """Carries a native library: installed as platform-specific, never as a pure package."""

    def has_ext_modules(self):
        return True


cmdclass = {"build_py": BuildWithLibrary}
if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """py3-none-<platform>: ctypes works on any Python 3; the library fits one platform."""

        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass, distclass=PlatformDistribution)
