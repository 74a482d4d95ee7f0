//! Builds the C programs in `c_tests/` and `examples/c/` against the freshly built `libzcopy.so`
//! and the checked-in `include/zcopy.h`, with `-Wall -Wextra -Wpedantic -Werror`, and runs them.
//! Each program exits non-zero at its first failing check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{lib_dir, manifest_dir, profile_dir};

/// Compiles `sources` (paths relative to the repository) into one program and returns its path.
pub fn build_c(name: &str, sources: &[&str], extra_flags: &[&str]) -> PathBuf {
    build(name, sources, extra_flags, false)
}

/// The same for C++17 sources (`zcopy.hpp`), with g++'s strict warnings.
pub fn build_cpp(name: &str, sources: &[&str]) -> PathBuf {
    build(name, sources, &[], true)
}

fn build(name: &str, sources: &[&str], extra_flags: &[&str], cpp: bool) -> PathBuf {
    let root = manifest_dir();
    let compiler = cc::Build::new()
        .cpp(cpp)
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
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" });
    cmd.args(["-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread"])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("c_tests"))
        .args(extra_flags);
    for s in sources {
        cmd.arg(root.join(s));
    }
    cmd.arg("-o").arg(&out).arg("-L").arg(&lib).arg("-lzcopy").arg(format!("-Wl,-rpath,{}", lib.display()));
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
    let result = Command::new(program).args(args).output().expect("run the C program");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr);
    print!("{stdout}");
    assert!(result.status.success(), "{} failed ({}):\n{stdout}\n{stderr}", program.display(), result.status);
    stdout
}

fn c_test(file: &str) {
    let name = Path::new(file).file_stem().unwrap().to_str().unwrap();
    let program = build_c(name, &[file], &[]);
    let out = run(&program, &[]);
    assert!(out.contains(" passed, 0 failed"), "{name} printed no summary:\n{out}");
}

#[test]
fn header_is_up_to_date() {
    let checked_in = std::fs::read_to_string(manifest_dir().join("include/zcopy.h")).unwrap();
    let fresh = std::fs::read_to_string(env!("ZCOPY_GENERATED_HEADER")).unwrap();
    assert!(checked_in == fresh, "include/zcopy.h is stale: run `cargo build` outside CI and commit it");
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
fn c_parts() {
    c_test("c_tests/test_parts.c");
}

#[test]
fn c_threads() {
    c_test("c_tests/test_threads.c");
}

/// A forked child calling its parent's pool and buffers (whose memory it does not have).
#[test]
fn c_fork() {
    c_test("c_tests/test_fork.c");
}

/// Shared pools between a process and its forked children, which attach by name: what they
/// see, racing creates, wake-ups, delete and close while held, the file outliving its processes,
/// refused names and files, a killed child reclaimed.
#[test]
fn c_shared() {
    c_test("c_tests/test_shared.c");
}

/// Local mode on a host with no verbs device: as the host is, and as a host without rdma-core
/// (`ZCOPY_IBVERBS` names a library that does not exist).
#[test]
fn c_rdma_local_mode() {
    let program = build_c("test_rdma_local", &["c_tests/test_rdma_local.c"], &[]);
    assert!(run(&program, &[]).contains(" passed, 0 failed"));
    let out = Command::new(&program)
        .env("ZCOPY_IBVERBS", "libibverbs-hidden-by-test.so.1")
        .env("ZCOPY_TEST_NO_LIBIBVERBS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains(" passed, 0 failed"), "without libibverbs:\n{stdout}");
}

/// The real thing: `libibverbs.so.1` replaced by an empty file in a private mount namespace, so
/// `dlopen` fails exactly as on a host without rdma-core. Needs root (`unshare -m`).
#[test]
fn c_rdma_local_mode_with_libibverbs_hidden_by_a_mount_namespace() {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: hiding libibverbs.so.1 needs root (unshare -m, mount --bind)");
        return;
    }
    let program = build_c("test_rdma_local_hidden", &["c_tests/test_rdma_local.c"], &[]);
    let ldconfig = Command::new("ldconfig").arg("-p").output().expect("run ldconfig -p");
    let listing = String::from_utf8_lossy(&ldconfig.stdout).into_owned();
    let installed =
        listing.lines().find(|l| l.trim_start().starts_with("libibverbs.so.1 ")).and_then(|l| l.split("=> ").nth(1));
    let script = match installed {
        Some(path) => format!("mount --bind /dev/null {} && exec {}", path.trim(), program.display()),
        None => format!("exec {}", program.display()),
    };
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("ZCOPY_TEST_NO_LIBIBVERBS", "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "with libibverbs.so.1 hidden ({installed:?}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `libzcopy.so` must load where rdma-core is absent: libibverbs is opened at run time only.
#[test]
fn library_has_no_link_time_dependency_on_libibverbs() {
    let out = Command::new("readelf").arg("-d").arg(lib_dir().join("libzcopy.so")).output().expect("run readelf");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("(NEEDED)"), "readelf printed no dependencies:\n{dynamic}");
    assert!(!dynamic.contains("ibverbs"), "libzcopy.so links libibverbs:\n{dynamic}");
    assert!(dynamic.contains("[libzcopy.so.0]"), "SONAME missing:\n{dynamic}");
}

#[test]
fn cpp_wrapper_owns_handles_and_throws_statuses() {
    let program = build_cpp("test_hpp", &["c_tests/test_hpp.cpp"]);
    assert!(run(&program, &[]).contains("5 passed, 0 failed"));
}

#[test]
fn cpp_example_tensor_builds_with_strict_warnings_and_runs() {
    let program = build_cpp("example_tensor", &["examples/cpp/tensor.cpp"]);
    let out = run(&program, &[]);
    assert!(out.contains("zero-copy: reader pointer == writer pointer"), "{out}");
    assert!(out.contains("expected error: key \"layer0/activations\" already exists (status 3)"), "{out}");
}

#[test]
fn c_example_lifecycle_builds_and_runs() {
    let program = build_c("example_lifecycle", &["examples/c/lifecycle.c"], &[]);
    let out = run(&program, &[]);
    assert!(out.contains("zero-copy: reader pointer == writer pointer"), "{out}");
}

/// Every size and offset `src/rdma/verbs.rs` declares, against the system's `<infiniband/verbs.h>`
/// (package libibverbs-dev). The Rust structs may be larger than the C ones only where they are
/// padded on purpose (`ibv_device_attr`, so that `ibv_query_device` has room).
#[test]
fn verbs_struct_layout_matches_the_system_header() {
    use std::mem::{offset_of, size_of};
    use zcopy::rdma::verbs::*;

    assert!(
        Path::new("/usr/include/infiniband/verbs.h").exists(),
        "<infiniband/verbs.h> is missing: install libibverbs-dev (scripts/test.sh does it as root)"
    );
    let program = build_c("verbs_layout", &["c_tests/verbs_layout.c"], &[]);
    let out = run(&program, &[]);
    let c: std::collections::HashMap<String, usize> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_kind, name, value) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect();
    let rust: Vec<(&str, usize)> = vec![
        ("ibv_pd.context", offset_of!(ibv_pd, context)),
        ("ibv_pd.handle", offset_of!(ibv_pd, handle)),
        ("ibv_mr", size_of::<ibv_mr>()),
        ("ibv_mr.context", offset_of!(ibv_mr, context)),
        ("ibv_mr.pd", offset_of!(ibv_mr, pd)),
        ("ibv_mr.addr", offset_of!(ibv_mr, addr)),
        ("ibv_mr.length", offset_of!(ibv_mr, length)),
        ("ibv_mr.handle", offset_of!(ibv_mr, handle)),
        ("ibv_mr.lkey", offset_of!(ibv_mr, lkey)),
        ("ibv_mr.rkey", offset_of!(ibv_mr, rkey)),
        ("ibv_device_attr.fw_ver", offset_of!(ibv_device_attr, fw_ver)),
        ("ibv_device_attr.node_guid", offset_of!(ibv_device_attr, node_guid)),
        ("ibv_device_attr.sys_image_guid", offset_of!(ibv_device_attr, sys_image_guid)),
        ("ibv_device_attr.max_mr_size", offset_of!(ibv_device_attr, max_mr_size)),
        ("IBV_ACCESS_LOCAL_WRITE", IBV_ACCESS_LOCAL_WRITE as usize),
        ("IBV_ACCESS_REMOTE_WRITE", IBV_ACCESS_REMOTE_WRITE as usize),
        ("IBV_ACCESS_REMOTE_READ", IBV_ACCESS_REMOTE_READ as usize),
    ];
    for (name, value) in rust {
        assert_eq!(c.get(name), Some(&value), "{name}: C says {:?}, zcopy declares {value}", c.get(name));
    }
    let c_attr = c["ibv_device_attr"];
    assert!(
        size_of::<ibv_device_attr>() >= c_attr,
        "ibv_device_attr is {c_attr} bytes in C, only {} in zcopy",
        size_of::<ibv_device_attr>()
    );
}
