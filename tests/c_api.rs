//! Builds the C programs in `c_tests/` and `examples/c/` against the freshly built `libzcopy.so`
//! and the checked-in `include/zcopy.h`, with `-Wall -Wextra -Wpedantic -Werror`, and runs them.
//! Each program exits non-zero at its first failing check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{lib_dir, manifest_dir, profile_dir};

/// Compiles `sources` (paths relative to the repository) into one program and returns its path.
pub fn build_c(name: &str, sources: &[&str], extra_flags: &[&str]) -> PathBuf {
    let root = manifest_dir();
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .cargo_warnings(false)
        .target(env!("ZCOPY_TARGET"))
        .host(env!("ZCOPY_HOST"))
        .opt_level(1)
        .debug(true)
        .get_compiler();
    let lib = lib_dir();
    let out = profile_dir().join("c_tests_bin").join(name);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut cmd = compiler.to_command();
    cmd.args([
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Werror",
        "-pthread",
    ])
    .arg("-I")
    .arg(root.join("include"))
    .arg("-I")
    .arg(root.join("c_tests"))
    .args(extra_flags);
    for s in sources {
        cmd.arg(root.join(s));
    }
    cmd.arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg("-lzcopy")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    let result = cmd.output().expect("run the C compiler");
    assert!(
        result.status.success(),
        "compiling {name} failed:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// Runs a built program and returns its stdout; fails the test on a non-zero exit.
pub fn run(program: &Path, args: &[&str]) -> String {
    let result = Command::new(program)
        .args(args)
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr);
    print!("{stdout}");
    assert!(
        result.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        result.status
    );
    stdout
}

fn c_test(file: &str) {
    let name = Path::new(file).file_stem().unwrap().to_str().unwrap();
    let program = build_c(name, &[file], &[]);
    let out = run(&program, &[]);
    assert!(
        out.contains(" passed, 0 failed"),
        "{name} printed no summary:\n{out}"
    );
}

#[test]
fn header_is_up_to_date() {
    let checked_in = std::fs::read_to_string(manifest_dir().join("include/zcopy.h")).unwrap();
    let fresh = std::fs::read_to_string(env!("ZCOPY_GENERATED_HEADER")).unwrap();
    assert!(
        checked_in == fresh,
        "include/zcopy.h is stale: run `cargo build` outside CI and commit it"
    );
}

#[test]
fn c_lifecycle() {
    c_test("c_tests/test_lifecycle.c");
}

#[test]
fn c_errors() {
    c_test("c_tests/test_errors.c");
}

#[test]
fn c_threads() {
    c_test("c_tests/test_threads.c");
}

#[test]
fn c_example_lifecycle_builds_and_runs() {
    let program = build_c("example_lifecycle", &["examples/c/lifecycle.c"], &[]);
    let out = run(&program, &[]);
    assert!(
        out.contains("zero-copy: reader pointer == writer pointer"),
        "{out}"
    );
}
