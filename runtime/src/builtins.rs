//! Sinks compiled into the `sinkbox` binary, named `builtin:NAME`.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of the built-in sink `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The built-in sinks' names.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}
