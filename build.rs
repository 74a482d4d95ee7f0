//! Generates `include/zcopy.h` with the pinned cbindgen, and gives the shared library its SONAME
//! and the `libzcopy.so.0` link in the build tree.
//!
//! The fresh header always goes to `$OUT_DIR/zcopy.h`. Outside CI it is also written to
//! `include/zcopy.h` (commit it with the change); in CI (`CI` set) the checked-in copy is left as
//! it is, so the `header_is_up_to_date` test fails when it is stale.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    for path in ["src", "cbindgen.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=CI");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let fresh = out_dir.join("zcopy.h");
    bindings.write_to_file(&fresh);
    println!("cargo:rustc-env=ZCOPY_GENERATED_HEADER={}", fresh.display());
    // The C tests compile with the `cc` crate at test time and need the target it would use.
    println!("cargo:rustc-env=ZCOPY_TARGET={}", env::var("TARGET").expect("cargo sets TARGET"));
    println!("cargo:rustc-env=ZCOPY_HOST={}", env::var("HOST").expect("cargo sets HOST"));

    if env::var_os("CI").is_none_or(|v| v.is_empty()) {
        bindings.write_to_file(crate_dir.join("include").join("zcopy.h"));
    }

    // The exported symbols are rustc's own list for a cdylib: the `#[no_mangle]` functions, all
    // `zc_*` (tests/install.rs checks the built library). An extra linker version script cannot be
    // combined with rustc's by GNU ld ("anonymous version tag cannot be combined with other
    // version tags"), and lld, which accepts it, left the symbols unversioned anyway.
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libzcopy.so.{major}");
    soname_link(&out_dir, &major);
}

/// Puts `libzcopy.so.MAJOR -> libzcopy.so` next to the library cargo builds (OUT_DIR is
/// `target/<profile>/build/zcopy-<hash>/out`), so that a program linked against the build tree
/// finds its SONAME there (README, "Linking from C").
fn soname_link(out_dir: &Path, major: &str) {
    let Some(profile_dir) = out_dir.ancestors().nth(3) else { return };
    if out_dir.ancestors().nth(2).and_then(Path::file_name) != Some("build".as_ref()) {
        return;
    }
    let link = profile_dir.join(format!("libzcopy.so.{major}"));
    if std::fs::read_link(&link).is_ok_and(|target| target == Path::new("libzcopy.so")) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("libzcopy.so", &link)
        .unwrap_or_else(|e| panic!("cannot create the SONAME link {}: {e}", link.display()));
}
