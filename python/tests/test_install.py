"""`pip install ./python` needs no compiler: it copies the built libzcopy.so next to the package."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest


def _build_tools_missing():
    for mod in ("pip", "setuptools"):
        if importlib.util.find_spec(mod) is None:
            return "%s is not installed" % mod
    # Read the version without importing setuptools here (its distutils shim must not load in pytest).
    text = importlib.metadata.version("setuptools")
    version = tuple(int(x) for x in text.split(".")[:2] if x.isdigit())
    # Without build isolation, setuptools before 70.1 builds wheels through the `wheel` package.
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "setuptools %s needs the 'wheel' package to build without isolation" % text
    return None


def test_pip_install_without_compiler_ships_the_library(tmp_path, repo_root):
    missing = _build_tools_missing()
    if missing:
        pytest.skip(missing)
    built = [os.path.join(repo_root, "target", p, "libzcopy.so") for p in ("release", "debug")]
    if not any(os.path.exists(p) for p in built):
        pytest.skip("libzcopy.so is not built (cargo build --release --lib)")

    # pip builds in the source tree (build/, *.egg-info); build from a copy with the same layout
    # (python/ beside target/ and include/) so the checkout stays untouched.
    src = tmp_path / "src"
    shutil.copytree(
        os.path.join(repo_root, "python"),
        src / "python",
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"),
    )
    os.symlink(os.path.join(repo_root, "target"), src / "target")
    os.symlink(os.path.join(repo_root, "include"), src / "include")

    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("ZCOPY_LIBRARY", "CC", "CXX")}
    env["PATH"] = os.environ.get("PATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(src / "python")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (target / "zcopy" / "libzcopy.so").is_file()
    assert (target / "zcopy" / "zcopy.h").is_file()

    code = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        import zcopy
        target = os.path.realpath(sys.argv[1])
        assert os.path.realpath(zcopy.__file__).startswith(target + os.sep), zcopy.__file__
        assert os.path.realpath(zcopy.library_path).startswith(target + os.sep), zcopy.library_path
        pool = zcopy.Pool(4 << 20, pages="small", prefault=False)
        pool.put_array("a", np.arange(12, dtype=np.float32).reshape(3, 4))
        a = pool.get_array("a")
        assert a.dtype == np.float32 and a.shape == (3, 4)
        assert a.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
        base, length = pool.region()
        assert base <= a.ctypes.data < base + length
        print("INSTALLED-OK", zcopy.library_path)
        """
    )
    run_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    run_env["PYTHONPATH"] = str(target)
    # numpy comes from this interpreter's site-packages; the package only from the install target.
    run = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60,
        env=run_env, cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("INSTALLED-OK")
