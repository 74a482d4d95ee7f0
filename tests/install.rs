//! `scripts/install.sh` lays out a prefix that C programs build against through pkg-config, and
//! the installed library resolves through its SONAME link.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::profile_dir;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn installed_prefix_builds_and_runs_a_c_program_through_pkg_config() {
    if Command::new("pkg-config").arg("--version").output().is_err() {
        panic!("pkg-config is not installed (apt-get install pkg-config)");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let prefix = profile_dir().join("install-test-prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    let lib = common::lib_path();
    run(Command::new("bash").arg(root.join("scripts/install.sh")).arg("--lib").arg(&lib).arg(&prefix));

    let version = env!("CARGO_PKG_VERSION");
    assert!(prefix.join(format!("lib/libzcopy.so.{version}")).is_file());
    assert_eq!(
        std::fs::read_link(prefix.join("lib/libzcopy.so.0")).unwrap(),
        PathBuf::from(format!("libzcopy.so.{version}"))
    );
    assert!(prefix.join("include/zcopy.h").is_file());

    let pc_path = prefix.join("lib/pkgconfig");
    let flags = run(Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args(["--cflags", "--libs", "zcopy"]));
    assert!(flags.contains(&format!("-I{}/include", prefix.display())), "{flags}");
    assert!(flags.contains("-lzcopy"), "{flags}");
    let modversion = run(Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args(["--modversion", "zcopy"]));
    assert_eq!(modversion.trim(), version);

    let program = prefix.join("lifecycle");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-pthread"])
        .arg(root.join("examples/c/lifecycle.c"))
        .arg("-o")
        .arg(&program)
        .args(flags.split_whitespace());
    run(&mut cc);

    let needed = run(Command::new("readelf").arg("-d").arg(&program));
    assert!(needed.contains("[libzcopy.so.0]"), "the program must depend on the SONAME:\n{needed}");
    let out = run(Command::new(&program).env("LD_LIBRARY_PATH", prefix.join("lib")));
    assert!(out.contains("zero-copy: reader pointer == writer pointer"), "{out}");
}
