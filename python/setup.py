"""Copies the built libzcopy.so (and zcopy.h) next to the package when it is installed from the
repository (`pip install ./python` after `cargo build --release`), so the installed package finds
its library without a compiler and without environment variables."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "zcopy")
        for profile in ("release", "debug"):
            lib = os.path.join(ROOT, "target", profile, "libzcopy.so")
            if os.path.exists(lib):
                shutil.copy2(lib, os.path.join(target, "libzcopy.so"))
                break
        header = os.path.join(ROOT, "include", "zcopy.h")
        if os.path.exists(header):
            shutil.copy2(header, os.path.join(target, "zcopy.h"))


setup(cmdclass={"build_py": BuildWithLibrary})
