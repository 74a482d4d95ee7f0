//! Shared by the tests that run C programs: a `libzcopy.so` built from the current sources.
#![allow(dead_code)] // each test crate uses part of it
//!
//! `cargo test` builds the library as an rlib for the tests but does not rebuild the cdylib, so
//! these tests build it themselves, in a target folder of their own (a nested cargo in the same
//! folder would wait forever on the lock the outer one holds).

pub mod children;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>` of this test run.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// A folder holding a fresh `libzcopy.so` and the `libzcopy.so.0` its SONAME asks for.
pub fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_lib).clone()
}

/// The fresh `libzcopy.so` itself.
pub fn lib_path() -> PathBuf {
    lib_dir().join("libzcopy.so")
}

fn build_lib() -> PathBuf {
    let target = profile_dir().parent().expect("target folder").join("c-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(manifest_dir())
        .args(["build", "--lib", "--quiet", "--target-dir"])
        .arg(&target)
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build of libzcopy.so failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let built = target.join("debug").join("libzcopy.so");
    let dir = target.join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libzcopy.so", "libzcopy.so.0"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&built, &link).unwrap();
    }
    dir
}
