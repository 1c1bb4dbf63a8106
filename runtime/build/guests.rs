//! Builds guest crates of this workspace into wasm32-wasip2 components, from
//! a build script. Shared by the runtime's build script (built-in sinks) and
//! the tests' (test programs), as in wasmtime's test-programs crate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root, from a crate directly below it or two levels down.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    manifest.ancestors().find(|dir| dir.join("wit").is_dir()).expect("the workspace has a wit/ folder").to_path_buf()
}

/// Runs `cargo build --release --target wasm32-wasip2` with `args` (package
/// and target selection) in a target directory of its own, so it never
/// waits on the outer build's lock, and returns the directory holding the
/// built `.wasm` files.
pub fn build(args: &[&str]) -> PathBuf {
    build_with(args, &[])
}

/// [`build`] with more environment variables for cargo, e.g. a profile
/// setting for these guests only.
pub fn build_with(args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target").join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        .args(args)
        // The outer build's flags are for the host, not for wasm.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        // Under `cargo clippy` the outer build wraps rustc; guests are
        // linted natively as workspace members, not again here.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        // Guests run under fuel and epoch checks, which are paid per call
        // and loop: whole-program optimization inlines the SDK's record
        // iterator into each sink and removes most of them.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .envs(env.iter().copied());
    let status = cmd.status().expect("cannot run cargo to build the wasm guests");
    assert!(
        status.success(),
        "building the wasm guests failed ({status}); is the target installed? run: rustup target add wasm32-wasip2"
    );
    // The workspace manifest holds the guests' dependency versions and
    // profiles.
    for path in ["Cargo.toml", "wit", "guest-sdk", "sinks", "tests/programs", "runtime/validator"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    target_dir.join("wasm32-wasip2").join("release")
}

/// Copies `name.wasm` from `dir` to `out_dir` and returns the copy's path,
/// so the outer crate embeds a file no later guest build can change under it.
pub fn stage(dir: &Path, subdir: &str, name: &str, out_dir: &Path) -> PathBuf {
    let from = dir.join(subdir).join(format!("{name}.wasm"));
    let to = out_dir.join(format!("{name}.wasm"));
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
    to
}
