//! `--version` of both packaged binaries: version and git commit (`build/git_version.rs`),
//! also when the source tree has no `.git`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

const GATEWAY: &str = env!("CARGO_BIN_EXE_breakwater-gateway");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["-C", MANIFEST_DIR, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn version_prints_the_package_version_and_the_commit_of_the_checkout() {
    let out = Command::new(GATEWAY).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("breakwater-gateway {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&prefix), "{line:?}");
    let commit = line[prefix.len()..].trim_end().trim_end_matches(')');
    if std::env::var_os("BREAKWATER_GIT_COMMIT").is_some() {
        return; // an explicit override; the build script test below covers it
    }
    match head_commit() {
        // Built from this checkout: the commit must be HEAD's, not that of an earlier build.
        Some(head) => assert_eq!(commit, head, "{line:?}"),
        None => assert_eq!(commit, "unknown", "{line:?}"),
    }
}

/// Compiles the build script on its own and runs it the way cargo does, in a directory that is
/// not a git checkout (a source tarball).
fn run_build_script(tmp: &Path, manifest_dir: &Path, env: Option<&str>) -> String {
    let script = Path::new(MANIFEST_DIR).join("../build/git_version.rs");
    let exe = tmp.join("git_version");
    if !exe.exists() {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let st = Command::new(rustc)
            .args(["--edition", "2021", "-o"])
            .arg(&exe)
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut cmd = Command::new(&exe);
    cmd.env("CARGO_MANIFEST_DIR", manifest_dir)
        // Keep git from finding a repository above the temporary directory.
        .env("GIT_CEILING_DIRECTORIES", tmp)
        .env_remove("BREAKWATER_GIT_COMMIT");
    if let Some(v) = env {
        cmd.env("BREAKWATER_GIT_COMMIT", v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn build_script_works_without_git_metadata_and_honours_the_override() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("gateway");
    std::fs::create_dir(&src).unwrap();

    let out = run_build_script(tmp.path(), &src, None);
    assert!(
        out.lines()
            .any(|l| l == "cargo:rustc-env=BREAKWATER_GIT_COMMIT=unknown"),
        "{out}"
    );
    // Only paths that exist may be watched, or cargo would rerun it on every build.
    for l in out.lines() {
        if let Some(p) = l.strip_prefix("cargo:rerun-if-changed=") {
            assert!(
                p == "../build/git_version.rs" || Path::new(p).exists(),
                "{l}"
            );
        }
    }

    let out = run_build_script(tmp.path(), &src, Some("0123456789ab"));
    assert!(
        out.lines()
            .any(|l| l == "cargo:rustc-env=BREAKWATER_GIT_COMMIT=0123456789ab"),
        "{out}"
    );
}
