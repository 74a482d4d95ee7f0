//! Generates `include/zcopy.h` with the pinned cbindgen, and gives the shared library its SONAME
//! and exported-symbol list.
//!
//! The fresh header always goes to `$OUT_DIR/zcopy.h`. Outside CI it is also written to
//! `include/zcopy.h` (commit it with the change); in CI (`CI` set) the checked-in copy is left as
//! it is, so the `header_is_up_to_date` test fails when it is stale.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    for path in ["src", "cbindgen.toml", "zcopy.map", "build.rs"] {
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

    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libzcopy.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={}", crate_dir.join("zcopy.map").display());
}
