//! Builds every example of `tests/programs` into a component and writes one
//! constant per program (its path), as wasmtime's test-programs-artifacts
//! does. A program that no test in `tests/all` names fails the build.

#[path = "../../runtime/build/guests.rs"]
mod guests;

use std::path::PathBuf;

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
    // The Python SDK's examples, built with componentize-py.
    let python = root.join("guest-sdk/python");
    println!("cargo:rerun-if-changed={}", python.display());
    let mut examples: Vec<PathBuf> =
        std::fs::read_dir(python.join("examples")).expect("python examples").flatten().map(|e| e.path()).collect();
    examples.sort();
    for dir in examples {
        let name = dir.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
        let out = out_dir.join(format!("py_{name}.wasm"));
        let status = std::process::Command::new("componentize-py")
            .arg("-d")
            .arg(root.join("wit"))
            .args(["-w", "sinkbox:sink/sink-world", "componentize", "app", "-p"])
            .arg(&dir)
            .arg("-p")
            .arg(&python)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run componentize-py ({e}); install it: pip install componentize-py==0.25.1")
            });
        assert!(status.success(), "componentize-py failed to build guest-sdk/python/examples/{name}");
        let constant = format!("PY_{}", name.to_uppercase());
        if !tests.contains(&constant) {
            untested.push(constant.clone());
        }
        code.push_str(&format!(
            "/// The Python example `{name}`.\npub const {constant}: &str = {:?};\n",
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
