//! Builds the built-in sinks (`sinks/*`) into components embedded in the
//! `sinkbox` binary, so `builtin:file` works with nothing else installed,
//! and the config-schema validator (`runtime/validator`), which the runtime
//! runs in a sandbox.

#[path = "build/guests.rs"]
mod guests;

use std::path::PathBuf;

/// The config-schema validator's crate (`runtime/validator`), a WASI command.
const VALIDATOR: &str = "sinkbox-schema-validator";

/// Built-in sink names; each is the crate `sinks/NAME` (`sinkbox-sink-NAME`).
const BUILTINS: [&str; 9] =
    ["blackhole", "elasticsearch", "file", "http", "influxdb", "mqtt", "postgres", "redis", "s3"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let packages: Vec<String> = BUILTINS.iter().map(|name| format!("sinkbox-sink-{name}")).collect();
    let args: Vec<&str> = packages.iter().flat_map(|p| ["-p", p.as_str()]).collect();
    let wasm_dir = guests::build(&args);
    let mut code =
        String::from("/// Built-in sinks: name and component bytes.\npub const BUILTINS: &[(&str, &[u8])] = &[\n");
    for name in BUILTINS {
        let path = guests::stage(&wasm_dir, "", &format!("sinkbox_sink_{name}"), &out_dir);
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), code).expect("cannot write builtins.rs");
    // wasmtime compiles the validator on a cold cache (the first `run` or
    // `validate`): optimized for size (1.8 MB against 2.7 MB) it compiles
    // in half the time (1.2 s against 2.4 s on 2 cores), and it spends its
    // time on one schema, not in a hot loop.
    let wasm_dir = guests::build_with(&["-p", VALIDATOR], &[("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")]);
    let path = guests::stage(&wasm_dir, "", VALIDATOR, &out_dir);
    let code = format!(
        "/// The config-schema validator, a WASI command component.\npub(crate) const VALIDATOR: &[u8] = include_bytes!({:?});\n",
        path.display().to_string()
    );
    std::fs::write(out_dir.join("validator.rs"), code).expect("cannot write validator.rs");
}
