//! Builds the built-in sinks (`sinks/*`) into components embedded in the
//! `sinkbox` binary, so `builtin:file` works with nothing else installed.

#[path = "build/guests.rs"]
mod guests;

use std::path::PathBuf;

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
}
