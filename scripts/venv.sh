# Sourced by scripts/demo.sh and scripts/test.sh: the project's Python environment.
#
# Distributions mark their python3 as externally managed (PEP 668: Debian 12, Ubuntu 24.04 and
# later), so pip refuses to install into it. Everything these scripts install with pip goes into a
# virtual environment instead: `.venv/` at the repository root (ZCOPY_VENV chooses another path),
# made from $PYTHON, by default the distribution's /usr/bin/python3 where it exists, else the
# python3 on PATH. The venv is created once and reused; it is made again when it no longer runs or
# was made from another interpreter than $PYTHON. Where `python3 -m venv` is missing (Debian and
# Ubuntu ship it in python3-venv), it is installed with apt-get when running as root.
#
#   zcopy_venv [pip install arguments...]
#       creates or reuses the venv, installs the arguments into it with pip (none: installs
#       nothing), and sets $python to the venv's interpreter.

zcopy_venv_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

zcopy_venv() {
    local base=${PYTHON:-}
    if [ -z "$base" ]; then
        if [ -x /usr/bin/python3 ]; then base=/usr/bin/python3; else base=python3; fi
    fi
    if ! command -v "$base" >/dev/null; then
        echo "venv.sh: $base not found: install Python 3 or set PYTHON to a Python 3 interpreter" >&2
        return 1
    fi
    local venv=${ZCOPY_VENV:-$zcopy_venv_root/.venv}
    local want have=""
    want=$("$base" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    if [ -x "$venv/bin/python" ]; then
        have=$("$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null) || have=""
    fi
    if [ "$have" != "$want" ]; then
        [ -z "$have" ] || echo "== the venv at $venv was made from $have, not $want: making it again"
        zcopy_venv_ensure_module "$base" || return 1
        echo "== creating the Python venv $venv from $base ($want)"
        rm -rf "$venv"
        if ! "$base" -m venv "$venv"; then
            rm -rf "$venv"
            echo "venv.sh: '$base -m venv $venv' failed" >&2
            return 1
        fi
    fi
    python=$venv/bin/python
    if [ $# -gt 0 ]; then
        PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check "$@"
    fi
}

# `python3 -m venv` needs the venv module and ensurepip; Debian and Ubuntu split them off the
# interpreter into python3-venv.
zcopy_venv_ensure_module() {
    local base=$1 version
    "$base" -c 'import venv, ensurepip' 2>/dev/null && return 0
    version=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing python3-venv (python$version-venv) for '$base -m venv'"
        apt-get update -qq
        # --no-upgrade: where they are installed already, upgrading them would not help.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade python3-venv "python$version-venv" >/dev/null
        "$base" -c 'import venv, ensurepip' 2>/dev/null && return 0
    fi
    echo "venv.sh: '$base -m venv' is not available: install python3-venv (Debian/Ubuntu:" \
        "apt-get install python3-venv python$version-venv) or set PYTHON to an interpreter that has it" >&2
    return 1
}
