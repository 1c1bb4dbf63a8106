//! Sinkbox runs sinks (code that writes a stream of records somewhere) as
//! sandboxed WebAssembly components inside a checkpoint loop.
//!
//! The pieces:
//! - [`Engine`]: the configured wasmtime engine, linker and compiled-component
//!   cache; one per process.
//! - [`SinkInstance`]: one sink in its own sandbox ([`SandboxLimits`],
//!   [`Grants`]); every call is async and runs under a wall-clock deadline
//!   that covers its host calls, a memory cap and optionally fuel.
//! - [`Source`]: where records come from ([`LineSource`] reads JSON lines from
//!   a file or stdin), on its own thread behind a [`SourceHandle`].
//! - [`Pipeline`]: a source fanned out to sinks, one task per sink instance
//!   (per sink, partition and lane), checkpoints as barriers, replays per
//!   instance, an [`OffsetStore`] holding positions and sink snapshots, and
//!   a dead-letter queue ([`DeadLetters`]). All of it runs on one tokio
//!   runtime per process ([`runtime`]).
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
//! assert_eq!(status.outcome, sinkbox::Outcome::Finished);
//! assert_eq!(status.sinks[0].added, 3);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod bindings;
pub mod builtins;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod error;
pub mod lock;
pub mod sandbox;
pub mod schema;
pub mod source;
pub mod state;
pub mod status;

pub use bindings::{Batch, CONTRACT, Context};
pub use checkpoint::{
    Batching, CheckpointReport, Committed, Control, DeadLetters, Observer, OffsetStore, OnError, Pipeline, RateLimit,
    RetryPolicy, SinkSpec, Snapshots, runtime,
};
pub use config::PipelineFile;
pub use engine::{EngineOptions, Pooling};
pub use error::{DeadLetterLimit, Error, Fault, Phase, Result, SinkFailure};
pub use sandbox::{
    CallStats, DirGrant, DiskQuota, Engine, Failure, Grants, HostGrant, HostPattern, Interrupt, NetStats,
    SandboxLimits, SinkComponent, SinkInstance,
};
pub use source::{LineFormat, LineSource, PartitionId, Position, Source, SourceEvent, SourceHandle, Stream};
pub use state::{PipelineState, StateLock};
pub use status::{LaneStatus, Outcome, PartitionStatus, SinkMetrics, Status};
