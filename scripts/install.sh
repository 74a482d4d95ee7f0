#!/usr/bin/env bash
# Installs a built libzcopy.so, its SONAME link, include/zcopy.h and a zcopy.pc under a prefix.
#
#   cargo build --release && scripts/install.sh /usr/local
#   scripts/install.sh --lib target/debug/libzcopy.so /tmp/zcopy-prefix
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lib="$root/target/release/libzcopy.so"
if [ "${1:-}" = "--lib" ]; then
    lib=$2
    shift 2
fi
prefix=${1:?usage: install.sh [--lib path/to/libzcopy.so] PREFIX}
[ -f "$lib" ] || { echo "install.sh: $lib not found; run 'cargo build --release' first" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
major=${version%%.*}

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/libzcopy.so.$version"
ln -sf "libzcopy.so.$version" "$prefix/lib/libzcopy.so.$major"
ln -sf "libzcopy.so.$major" "$prefix/lib/libzcopy.so"
install -m 0644 "$root/include/zcopy.h" "$prefix/include/zcopy.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/zcopy.pc.in" > "$prefix/lib/pkgconfig/zcopy.pc"
echo "installed zcopy $version under $prefix"
