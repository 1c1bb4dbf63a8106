//! Sinkbox runs sinks (code that writes a stream of records somewhere) as
//! sandboxed WebAssembly components inside a checkpoint loop.
//!
//! The pieces:
//! - [`Engine`]: the configured wasmtime engine, linker and compiled-component
//!   cache; one per process.
//! - [`SinkInstance`]: one sink in its own sandbox ([`SandboxLimits`],
//!   [`Grants`]); every call runs under fuel, a wall-clock deadline and a
//!   memory cap.
//! - [`Source`]: where records come from ([`LineSource`] reads JSON lines from
//!   a file or stdin).
//! - [`Pipeline`]: a source fanned out to sinks, with checkpoints, replays,
//!   an [`OffsetStore`] and a dead-letter queue ([`DeadLetters`]).
//! - [`PipelineFile`]: the `pipeline.toml` format that builds a pipeline.
//!
//! Run the built-in blackhole sink over three records:
//!
//! ```
//! use sinkbox::{Control, Engine, EngineOptions, PipelineFile};
//!
//! let dir = std::env::temp_dir().join(format!("sinkbox-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("in.jsonl"), "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n")?;
//! let file = PipelineFile::parse(
//!     r#"
//!     [source]
//!     kind = "file"
//!     path = "in.jsonl"
//!
//!     [[sink]]
//!     name = "count"
//!     component = "builtin:blackhole"
//!     "#,
//!     "example.toml",
//! )?;
//! let engine = Engine::new(EngineOptions::default().cache_dir(None))?;
//! let pipeline = file.build(&engine, &dir, "example")?;
//! let (status, result) = pipeline.run(&Control::default());
//! result?;
//! assert_eq!(status.committed, 3);
//! assert_eq!(status.sinks[0].added, 3);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod bindings;
pub mod builtins;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod sandbox;
pub mod schema;
pub mod source;
pub mod state;
pub mod status;

pub use bindings::Batch;
pub use checkpoint::{Batching, Control, DeadLetters, OffsetStore, OnError, Pipeline, RetryPolicy, SinkSpec};
pub use config::PipelineFile;
pub use engine::{Engine, EngineOptions, Pooling, SinkComponent};
pub use error::{Error, Fault, Phase, Result, SinkFailure};
pub use sandbox::{DirGrant, Failure, Grants, SandboxLimits, SinkInstance};
pub use source::{LineFormat, LineSource, Position, Source, Stream};
pub use state::{PipelineState, StateLock};
pub use status::{SinkMetrics, Status};
