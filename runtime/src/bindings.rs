//! The one `bindgen!` invocation: host-side bindings of `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sinkbox:sink/sink-world",
});

pub use self::sinkbox::sink::types::{Batch, Level, Rejection, SinkError as GuestError};
