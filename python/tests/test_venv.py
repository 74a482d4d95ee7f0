"""scripts/demo.sh and scripts/test.sh install with pip only into the project venv
(scripts/venv.sh), so they work with a distribution's externally managed python3 (PEP 668)."""

import base64
import hashlib
import os
import re
import subprocess
import zipfile

import pytest

DISTRIBUTION_PYTHON = "/usr/bin/python3"
PIP_CALL = re.compile(r"\bpip3?\s+install\b|-m\s+pip\b")


def _shell_files(root):
    yield os.path.join(root, ".ci", "run")
    for folder in ("scripts", "examples"):
        for dirpath, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                if name.endswith(".sh"):
                    yield os.path.join(dirpath, name)


def test_scripts_call_pip_only_through_the_project_venv(repo_root):
    venv_sh = os.path.join(repo_root, "scripts", "venv.sh")
    outside = []
    for path in _shell_files(repo_root):
        if path == venv_sh:
            continue
        with open(path) as f:
            for number, line in enumerate(f, 1):
                code = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
                if PIP_CALL.search(code):
                    outside.append("%s:%d: %s" % (os.path.relpath(path, repo_root), number, line.strip()))
    assert outside == [], "pip called outside scripts/venv.sh:\n" + "\n".join(outside)

    with open(venv_sh) as f:
        text = f.read()
    calls = [line.strip() for line in text.splitlines() if PIP_CALL.search(line) and not line.lstrip().startswith("#")]
    assert calls == ['PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check "$@"']
    assert "python=$venv/bin/python" in text
    for script in ("demo.sh", "test.sh"):
        with open(os.path.join(repo_root, "scripts", script)) as f:
            body = f.read()
        assert ". scripts/venv.sh" in body and "zcopy_venv " in body, script
        # $python is used only after zcopy_venv set it.
        assert body.index("zcopy_venv ") < body.index('"$python"'), script


def _probe_wheel(directory):
    """A one-module wheel, so pip installs something without the network."""
    name = "zcopy_venv_probe"
    dist_info = "%s-1.0.dist-info" % name
    files = {
        name + ".py": "WHERE = __file__\n",
        dist_info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: 1.0\n" % name,
        dist_info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: test_venv\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(text.encode())))
    record.append(dist_info + "/RECORD,,")
    files[dist_info + "/RECORD"] = "\n".join(record) + "\n"
    wheel = os.path.join(str(directory), "%s-1.0-py3-none-any.whl" % name)
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def _setup_venv(repo_root, venv, *pip_args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHON=DISTRIBUTION_PYTHON, ZCOPY_VENV=str(venv))
    script = '. scripts/venv.sh && zcopy_venv "$@" && echo "python=$python"'
    return subprocess.run(
        ["bash", "-euc", script, "bash", *pip_args], cwd=repo_root, env=env,
        capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(not os.access(DISTRIBUTION_PYTHON, os.X_OK), reason="no distribution Python at /usr/bin/python3")
def test_venv_setup_with_distribution_python_installs_into_the_venv_not_the_system(tmp_path, repo_root):
    wheel = _probe_wheel(tmp_path)
    venv = tmp_path / "venv"
    proc = _setup_venv(repo_root, venv, "--no-index", wheel)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "python=%s/bin/python" % venv

    with open(venv / "pyvenv.cfg") as f:
        config = f.read()
    assert "home = /usr/bin" in config, config

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    probe = "import zcopy_venv_probe as p; print(p.WHERE)"
    inside = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                            cwd=str(tmp_path), env=clean)
    assert inside.returncode == 0, inside.stderr
    assert os.path.realpath(inside.stdout.strip()).startswith(os.path.realpath(str(venv)) + os.sep)
    system = subprocess.run([DISTRIBUTION_PYTHON, "-c", probe], capture_output=True, text=True,
                            cwd=str(tmp_path), env=clean)
    assert system.returncode != 0 and "No module named 'zcopy_venv_probe'" in system.stderr, system.stderr

    # Made once: a second run reuses the venv (and what was installed in it).
    marker = venv / "made-once"
    marker.write_text("")
    again = _setup_venv(repo_root, venv)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "creating the Python venv" not in again.stdout
    assert marker.exists()
