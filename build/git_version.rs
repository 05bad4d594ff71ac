//! Build script of `breakwater-agent` and `breakwater-gateway` (both point `build =` here):
//! sets `BREAKWATER_GIT_COMMIT` for `--version`.
//!
//! The commit comes from, in this order: the environment variable `BREAKWATER_GIT_COMMIT` (set
//! it when building from a source tarball or in a container without `.git`), `git rev-parse
//! HEAD` in the source tree (a clone or a worktree), or `unknown`. The build never fails for
//! want of git. Cargo reruns this script only when HEAD or the branch it points at moves, so an
//! unchanged checkout builds from cache.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BREAKWATER_GIT_COMMIT");
    // At least one rerun-if-changed line, or cargo reruns on every change in the package.
    println!("cargo:rerun-if-changed=../build/git_version.rs");
    let commit = std::env::var("BREAKWATER_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BREAKWATER_GIT_COMMIT={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// The short commit of HEAD, and rerun-if-changed lines for the files that move with it.
fn git_commit() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let commit = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
    // In a worktree HEAD lives in the worktree's git dir and branches in the common one.
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let git_dir = abs(git(&dir, &["rev-parse", "--git-dir"])?);
    let common_dir =
        git(&dir, &["rev-parse", "--git-common-dir"]).map_or_else(|| git_dir.clone(), abs);
    let mut watch = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common_dir.join(branch));
    }
    // A path that does not exist would make cargo rerun the script on every build.
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(commit)
}
