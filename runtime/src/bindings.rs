//! The one `bindgen!` invocation: host-side bindings of `wit/`.
//!
//! Exports are async: every guest call is a future that yields at each
//! epoch tick, so a call's deadline can drop it wherever it is. The host's
//! own import (`log`) is synchronous and cheap.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sinkbox:sink/sink-world",
    exports: { default: async },
});

pub use self::sinkbox::sink::types::{
    Batch, Context, Level, Rejection, SinkError as GuestError, SinkStatus as GuestStatus,
};

/// The contract version this runtime implements.
pub const CONTRACT: &str = "sinkbox:sink@0.2.0";
