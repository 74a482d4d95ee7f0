//! `scripts/install.sh` lays out a prefix that C and C++ programs build against through
//! pkg-config, and the installed library resolves through its SONAME link; it installs the `zcopy`
//! tool, which runs; the README's linking recipes work as written; the library exports only `zc_*`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{manifest_dir, profile_dir};

/// What examples/c/lifecycle.c and examples/cpp/tensor.cpp print when they ran through.
const ZERO_COPY_LINE: &str = "zero-copy: reader pointer == writer pointer";

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
    let said = run(Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .arg("--lib")
        .arg(&lib)
        .args(["--bin", env!("CARGO_BIN_EXE_zcopy")])
        .arg(&prefix));
    assert!(said.contains(&format!("link programs with -Wl,-rpath,{}/lib", prefix.display())), "{said}");

    // The operator's tool, installed as built and runnable from the prefix alone.
    let tool = prefix.join("bin/zcopy");
    assert_eq!(std::fs::read(&tool).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_zcopy")).unwrap());
    assert_eq!(std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777, 0o755);
    let help = run(Command::new(&tool).arg("--help").env_remove("LD_LIBRARY_PATH"));
    assert!(help.contains("usage: zcopy COMMAND"), "{help}");
    for command in ["list", "stat NAME", "check NAME", "reclaim NAME", "rm NAME"] {
        assert!(help.contains(&format!("\n  {command} ")), "{command} in:\n{help}");
    }

    let version = env!("CARGO_PKG_VERSION");
    assert!(prefix.join(format!("lib/libzcopy.so.{version}")).is_file());
    assert_eq!(
        std::fs::read_link(prefix.join("lib/libzcopy.so.0")).unwrap(),
        PathBuf::from(format!("libzcopy.so.{version}"))
    );
    assert_eq!(std::fs::read_link(prefix.join("lib/libzcopy.so")).unwrap(), PathBuf::from("libzcopy.so.0"));
    for header in ["zcopy.h", "zcopy.hpp"] {
        assert_eq!(
            std::fs::read(prefix.join("include").join(header)).unwrap(),
            std::fs::read(root.join("include").join(header)).unwrap(),
            "{header} is installed as it is in include/"
        );
    }

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
    assert!(out.contains(ZERO_COPY_LINE), "{out}");
}

#[test]
fn installed_prefix_builds_and_runs_a_cpp_program_through_pkg_config() {
    let root = manifest_dir();
    let prefix = profile_dir().join("install-test-prefix-cpp");
    let _ = std::fs::remove_dir_all(&prefix);
    run(Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .arg("--lib")
        .arg(common::lib_path())
        .args(["--bin", env!("CARGO_BIN_EXE_zcopy")])
        .arg(&prefix));

    let flags = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(["--cflags", "--libs", "zcopy"]));
    let program = prefix.join("tensor");
    // Only what pkg-config names: the example includes "zcopy.hpp", found in the prefix alone.
    let mut cxx = Command::new("c++");
    cxx.args(["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
        .arg(root.join("examples/cpp/tensor.cpp"))
        .arg("-o")
        .arg(&program)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}/lib", prefix.display()));
    run(&mut cxx);

    let out = run(Command::new(&program).env_remove("LD_LIBRARY_PATH"));
    assert!(out.contains(ZERO_COPY_LINE), "{out}");
    assert!(out.contains("read 262144 bytes, sum 16305440.0"), "{out}");
}

/// The dynamic symbols the library defines are its C API and nothing else.
#[test]
fn library_exports_only_zc_symbols() {
    let table = run(Command::new("readelf").args(["--dyn-syms", "-W"]).arg(common::lib_path()));
    // Num: Value Size Type Bind Vis Ndx Name[@version]
    let exported: Vec<&str> = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && f[0].trim_end_matches(':').parse::<u32>().is_ok())
        .filter(|f| f[4] != "LOCAL" && f[6] != "UND")
        .map(|f| f[7].split('@').next().unwrap_or(f[7]))
        .collect();
    for name in ["zc_pool_open", "zc_create_buffer", "zc_seal", "zc_get", "zc_release", "zc_pool_close"] {
        assert!(exported.contains(&name), "{name} is not exported:\n{table}");
    }
    let others: Vec<&&str> = exported.iter().filter(|name| !name.starts_with("zc_")).collect();
    assert!(others.is_empty(), "exported symbols outside zc_*: {others:?}");
}

#[test]
fn readme_states_the_rust_version_of_cargo_toml() {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let wanted = format!("Rust toolchain ({} or newer", env!("CARGO_PKG_RUST_VERSION"));
    assert!(readme.contains(&wanted), "README.md should say \"{wanted}\"");
}

/// The `sh` blocks of README.md's "Linking from C" section.
fn readme_linking_recipes(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Linking from C\n").nth(1).expect("README.md has a \"Linking from C\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section.split("```sh\n").skip(1).map(|rest| rest.split("```").next().unwrap_or(rest).to_string()).collect()
}

/// Every recipe of README's "Linking from C" runs as written, each in a fresh scratch checkout (the
/// repository's files linked, its own `target/`, `app.c` = examples/c/lifecycle.c, `HOME` a scratch
/// folder), with neither LD_LIBRARY_PATH nor PKG_CONFIG_PATH set unless the recipe sets them. The
/// one that installs into /usr/local (as root, where install.sh runs ldconfig) runs in a private
/// mount namespace where /usr/local and /etc (for ld.so.cache) are overlays whose writes vanish.
#[test]
fn readme_linking_recipes_build_and_run_as_written() {
    let root = manifest_dir();
    let recipes = readme_linking_recipes(&std::fs::read_to_string(root.join("README.md")).unwrap());
    assert!(recipes.len() >= 3, "expected the installed, the home-prefix and the build-tree recipes: {recipes:?}");

    let work = profile_dir().parent().expect("target folder").join("readme-linking");
    std::fs::create_dir_all(&work).unwrap();
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name();
        if [".git", "target", ".venv"].iter().any(|skip| name == *skip) {
            continue;
        }
        let link = work.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(root.join(&name), &link).unwrap();
        }
    }
    // Cargo and rustup keep finding the toolchain under the scratch HOME.
    let real_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME").map_or_else(|| real_home.join(".cargo"), PathBuf::from);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map_or_else(|| real_home.join(".rustup"), PathBuf::from);
    let is_root = String::from_utf8_lossy(&Command::new("id").arg("-u").output().expect("run id").stdout).trim() == "0";

    for recipe in &recipes {
        assert!(recipe.contains("./app"), "every recipe runs the program it builds:\n{recipe}");
        let system = recipe.contains("/usr/local");
        if system && !is_root {
            eprintln!(
                "skipped: the /usr/local recipe needs root (install.sh runs ldconfig; mount namespace):\n{recipe}"
            );
            continue;
        }
        let scratch_home = work.join("home");
        let _ = std::fs::remove_dir_all(&scratch_home);
        let _ = std::fs::remove_file(work.join("app"));
        std::fs::create_dir_all(&scratch_home).unwrap();
        std::fs::copy(root.join("examples/c/lifecycle.c"), work.join("app.c")).unwrap();

        let mut cmd = if system { in_overlaid_system_prefix(&work, recipe) } else { sh(recipe) };
        cmd.current_dir(&work)
            .env("PWD", &work)
            .env("HOME", &scratch_home)
            .env("CARGO_HOME", &cargo_home)
            .env("RUSTUP_HOME", &rustup_home)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("PKG_CONFIG_PATH")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR");
        let out = run(&mut cmd);
        assert!(out.contains(ZERO_COPY_LINE), "recipe:\n{recipe}\noutput:\n{out}");
        if system {
            assert!(out.contains("ran ldconfig"), "install.sh into /usr/local as root runs ldconfig:\n{out}");
        }
    }
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-ec", script]);
    cmd
}

/// `script` in a private mount namespace whose /usr/local and /etc are overlays over the real
/// ones, their writes kept in a tmpfs that goes with the namespace.
fn in_overlaid_system_prefix(work: &Path, script: &str) -> Command {
    let overlays = work.join(".overlays");
    std::fs::create_dir_all(&overlays).unwrap();
    let setup = r#"
        mount -t tmpfs zcopy-readme-test "$0"
        for dir in /usr/local /etc; do
            mkdir -p "$0/$dir/upper" "$0/$dir/work"
            mount -t overlay overlay -o "lowerdir=$dir,upperdir=$0/$dir/upper,workdir=$0/$dir/work" "$dir"
        done
        exec sh -ec "$1"
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec", setup]).arg(&overlays).arg(script);
    cmd
}
