//! The Python, JavaScript and C SDKs' own test suites, run without building
//! a component: pytest over the Python SDK's fake host, node's test runner
//! over the JavaScript one, and the C SDK's native tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the runtime is in the workspace").to_path_buf()
}

/// Runs `command` in the workspace root; fails the test with its output.
fn passes(mut command: Command, what: &str, install: &str) {
    let output = command
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} ({e}); install: {install}"));
    assert!(
        output.status.success(),
        "the {what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn python_sdk_tests_pass() {
    let mut command = Command::new("python3");
    command.args(["-m", "pytest", "-q", "guest-sdk/python/tests"]);
    passes(command, "Python SDK tests", "pip install pytest (bash .ci/setup)");
}

#[test]
fn javascript_sdk_tests_pass() {
    let mut command = Command::new("node");
    command.args(["--test", "test/"]).current_dir(root().join("guest-sdk/js"));
    let output = command.output().expect("node runs (bash .ci/setup installs the SDK's packages)");
    assert!(
        output.status.success(),
        "the JavaScript SDK tests failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn c_sdk_tests_pass() {
    let out = std::env::temp_dir().join(format!("sinkbox-c-tests-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for test in ["sdk_test", "jsonl_sink_test"] {
        let binary = out.join(test);
        let mut build = Command::new("clang");
        build.args([
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-Wno-unknown-attributes",
            "-Iguest-sdk/c",
            "-Iguest-sdk/c/bindings",
        ]);
        build
            .arg(format!("guest-sdk/c/tests/{test}.c"))
            .arg("guest-sdk/c/bindings/sink_world.c")
            .arg("-o")
            .arg(&binary);
        passes(build, &format!("C SDK test build ({test})"), "apt-get install clang (bash .ci/setup)");
        passes(Command::new(&binary), &format!("C SDK test {test}"), "clang");
    }
    let _ = std::fs::remove_dir_all(&out);
}
