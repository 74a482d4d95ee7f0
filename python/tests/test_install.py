"""`pip install ./python` needs no compiler: it copies the built libzcopy.so next to the package,
building it with cargo first where cargo is there, and failing clearly where neither is. The wheel
is tagged for this platform, carries a stripped library, and installs where there is no Rust."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

RELEASE_LIB = os.path.join("target", "release", "libzcopy.so")
PIP = [sys.executable, "-m", "pip"]
# Offline and against this interpreter's setuptools: the tests need no network.
PIP_BUILD_FLAGS = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check"]


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


def _source_copy(tmp_path, repo_root, target=True, cargo_toml=False):
    """python/ copied beside include/ (and target/) as in the repository, so that pip's build
    files (build/, *.egg-info) stay out of the checkout."""
    src = tmp_path / "src"
    shutil.copytree(
        os.path.join(repo_root, "python"),
        src / "python",
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__", "*.so", ".pytest_cache"),
    )
    os.symlink(os.path.join(repo_root, "include"), src / "include")
    if target:
        os.symlink(os.path.join(repo_root, "target"), src / "target")
    if cargo_toml:
        (src / "Cargo.toml").write_text("")
    return src


def _env_without_rust(path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZCOPY_LIBRARY", "CC", "CXX", "CARGO", "RUSTUP_TOOLCHAIN", "PYTHONPATH")}
    env["PATH"] = path
    return env


def _has_debug_info(so_path):
    sections = subprocess.run(["readelf", "-S", "-W", so_path], capture_output=True, text=True, check=True).stdout
    assert ".dynsym" in sections, sections
    return ".debug_info" in sections


def _require_build_tools(repo_root):
    missing = _build_tools_missing()
    if missing:
        pytest.skip(missing)
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed (binutils)")
    if not os.path.exists(os.path.join(repo_root, RELEASE_LIB)):
        pytest.skip("libzcopy.so is not built (cargo build --release --lib)")


ROUND_TRIP = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import zcopy
    where = os.path.realpath(sys.argv[1])
    assert os.path.realpath(zcopy.__file__).startswith(where + os.sep), zcopy.__file__
    assert os.path.realpath(zcopy.library_path).startswith(where + os.sep), zcopy.library_path
    pool = zcopy.Pool(4 << 20, pages="small", prefault=False)
    pool.put_array("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    a = pool.get_array("a")
    assert a.dtype == np.float32 and a.shape == (3, 4)
    assert a.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    base, length = pool.region()
    assert base <= a.ctypes.data < base + length
    pool.put("b", b"bytes through the pool")
    assert pool.get_bytes("b") == b"bytes through the pool"
    print("INSTALLED-OK", zcopy.library_path)
    """
)


def test_pip_install_without_compiler_ships_the_stripped_library(tmp_path, repo_root):
    _require_build_tools(repo_root)
    src = _source_copy(tmp_path, repo_root)
    target = tmp_path / "site"
    # Cargo cannot run here (the copy has no Cargo.toml): the built library is what gets shipped.
    env = _env_without_rust(os.environ.get("PATH", ""))
    proc = subprocess.run(
        PIP + ["install", *PIP_BUILD_FLAGS, "--target", str(target), str(src / "python")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shipped = target / "zcopy" / "libzcopy.so"
    assert shipped.is_file()
    assert (target / "zcopy" / "zcopy.h").is_file()
    assert _has_debug_info(os.path.join(repo_root, RELEASE_LIB)), "the build tree keeps its debug info"
    assert not _has_debug_info(str(shipped))

    run_env = dict(env, PYTHONPATH=str(target))
    # numpy comes from this interpreter's site-packages; the package only from the install target.
    run = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(target)], capture_output=True, text=True, timeout=60,
        env=run_env, cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("INSTALLED-OK")


def test_pip_install_fails_clearly_without_a_built_library_or_cargo(tmp_path, repo_root):
    _require_build_tools(repo_root)
    src = _source_copy(tmp_path, repo_root, target=False, cargo_toml=True)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    proc = subprocess.run(
        PIP + ["install", *PIP_BUILD_FLAGS, "--target", str(tmp_path / "site"), str(src / "python")],
        capture_output=True, text=True, timeout=300, env=_env_without_rust(str(empty_bin)),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "libzcopy.so is not built and cargo is not on PATH to build it" in output, output[-3000:]
    assert not (tmp_path / "site" / "zcopy").exists()


def test_pip_install_builds_the_library_with_cargo_at_the_repository_root(tmp_path, repo_root):
    _require_build_tools(repo_root)
    src = _source_copy(tmp_path, repo_root, target=False, cargo_toml=True)
    # A stand-in cargo: records how it was called and "builds" by copying the real library.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "cargo.log"
    (fake_bin / "cargo").write_text(textwrap.dedent(
        """\
        #!/bin/sh
        echo "$PWD $*" >> "%s"
        mkdir -p target/release
        cp "%s" target/release/libzcopy.so
        """ % (log, os.path.join(repo_root, RELEASE_LIB))
    ))
    (fake_bin / "cargo").chmod(0o755)
    env = _env_without_rust(str(fake_bin) + os.pathsep + os.environ.get("PATH", ""))
    target = tmp_path / "site"
    proc = subprocess.run(
        PIP + ["install", *PIP_BUILD_FLAGS, "--target", str(target), str(src / "python")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert log.read_text().splitlines() == ["%s build --release --lib" % src]
    shipped = target / "zcopy" / "libzcopy.so"
    assert shipped.is_file() and not _has_debug_info(str(shipped))


def test_pip_wheel_is_platform_tagged_stripped_and_runs_without_rust(tmp_path, repo_root):
    _require_build_tools(repo_root)
    src = _source_copy(tmp_path, repo_root)
    dist = tmp_path / "dist"
    proc = subprocess.run(
        PIP + ["wheel", *PIP_BUILD_FLAGS, "--wheel-dir", str(dist), str(src / "python")],
        capture_output=True, text=True, timeout=300, env=_env_without_rust(os.environ.get("PATH", "")),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    wheels = sorted(os.listdir(dist))
    assert wheels == ["zcopy-0.1.0-py3-none-%s.whl" % platform], wheels
    wheel = dist / wheels[0]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "zcopy/libzcopy.so" in names and "zcopy/zcopy.h" in names, names
        wheel_meta = z.read("zcopy-0.1.0.dist-info/WHEEL").decode()
        extracted = z.extract("zcopy/libzcopy.so", str(tmp_path / "unzipped"))
    assert "Root-Is-Purelib: false" in wheel_meta, wheel_meta
    assert "Tag: py3-none-%s" % platform in wheel_meta, wheel_meta
    assert not _has_debug_info(extracted)

    # A machine without Rust: a fresh venv, a PATH without cargo, no ZCOPY_LIBRARY, and a working
    # folder outside the repository, so that only the wheel's library can load.
    venv = tmp_path / "fresh-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                   env=_env_without_rust(os.environ.get("PATH", "")))
    venv_bin = str(venv / "bin")
    env = _env_without_rust(venv_bin)
    assert shutil.which("cargo", path=venv_bin) is None
    py = os.path.join(venv_bin, "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    # numpy (a dependency) from this interpreter's site-packages, without the network.
    import numpy

    with open(os.path.join(site, "test-numpy.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(numpy.__file__)) + "\n")
    install = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([py, "-c", ROUND_TRIP, str(venv)], capture_output=True, text=True, timeout=60,
                         env=env, cwd=str(elsewhere))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("INSTALLED-OK")
