#!/usr/bin/env bash
# Installs a built libzcopy.so under a prefix: lib/libzcopy.so.VERSION with its SONAME link
# (libzcopy.so.0) and development link (libzcopy.so), include/zcopy.h and include/zcopy.hpp,
# lib/pkgconfig/zcopy.pc, and the operator's tool bin/zcopy.
#
#   cargo build --release && scripts/install.sh /usr/local
#   scripts/install.sh --lib target/debug/libzcopy.so --bin target/debug/zcopy /tmp/zcopy-prefix
#
# When PREFIX/lib is a directory the dynamic loader searches (/usr/local/lib, /usr/lib, ...) and
# this runs as root, it runs ldconfig so programs find the library at once. Under any other prefix
# it says how programs find it: -Wl,-rpath,PREFIX/lib when linking, or LD_LIBRARY_PATH.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lib="$root/target/release/libzcopy.so"
bin="$root/target/release/zcopy"
usage="usage: install.sh [--lib path/to/libzcopy.so] [--bin path/to/zcopy] PREFIX"
while [ $# -gt 0 ]; do
    case $1 in
        --lib) lib=${2:?$usage}; shift 2 ;;
        --bin) bin=${2:?$usage}; shift 2 ;;
        *) break ;;
    esac
done
prefix=${1:?$usage}
[ -f "$lib" ] || { echo "install.sh: $lib not found; run 'cargo build --release' first" >&2; exit 1; }
[ -f "$bin" ] || { echo "install.sh: $bin not found; run 'cargo build --release' first" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
major=${version%%.*}

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include" "$prefix/bin"
# zcopy.pc must name absolute directories, whatever form of PREFIX was given.
prefix=$(cd "$prefix" && pwd)
install -m 0755 "$lib" "$prefix/lib/libzcopy.so.$version"
ln -sfn "libzcopy.so.$version" "$prefix/lib/libzcopy.so.$major"
ln -sfn "libzcopy.so.$major" "$prefix/lib/libzcopy.so"
install -m 0644 "$root/include/zcopy.h" "$root/include/zcopy.hpp" "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/zcopy.pc.in" > "$prefix/lib/pkgconfig/zcopy.pc"
install -m 0755 "$bin" "$prefix/bin/zcopy"
echo "installed zcopy $version under $prefix"

# Whether the loader searches PREFIX/lib: ldconfig lists the directories it caches.
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
libdir=$(cd "$prefix/lib" && pwd -P)
searched=false
if [ -x "$ldconfig" ]; then
    while IFS= read -r dir; do
        if [ "$(cd "$dir" 2>/dev/null && pwd -P)" = "$libdir" ]; then
            searched=true
        fi
    done < <("$ldconfig" -v -N -X 2>/dev/null | sed -n 's|^\(/[^:]*\):.*|\1|p')
fi
if $searched && [ "$(id -u)" = 0 ]; then
    "$ldconfig"
    echo "ran ldconfig: programs find libzcopy.so.$major in $prefix/lib"
elif $searched; then
    echo "run 'ldconfig' as root so that programs find libzcopy.so.$major in $prefix/lib"
else
    echo "$prefix/lib is not on the loader's search path: link programs with -Wl,-rpath,$prefix/lib" \
        "(or run them with LD_LIBRARY_PATH=$prefix/lib)"
fi
