//! Sinkbox's integration tests: one binary, one module per area.
//!
//! Tests drive the real runtime over the test programs in `tests/programs`
//! (built into components by `tests/artifacts`) and the built-in sinks, and
//! assert exact outcomes: output files, dead letters, committed offsets and
//! error text.

mod cache;
mod cli;
mod compliance;
mod core;
mod crash;
mod egress;
#[cfg(feature = "kafka")]
mod kafka;
mod net_http;
mod net_tcp;
mod pipeline;
mod sdks;
mod serve;
mod serve_many;
#[allow(dead_code)] // Parts are used only by some network sinks' tests.
mod servers;
mod top;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sinkbox::{Control, Engine, EngineOptions, PipelineFile, Status};

/// One engine for the whole test binary: engines reserve address space for
/// their instance pool, and sharing one also shares compiled components.
/// Fuel is on (it is off by default) so the fuel limits can be tested.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
        Engine::new(EngineOptions::default().fuel(true).cache_dir(Some(cache))).expect("engine")
    })
}

/// A fresh directory for one test, removed when the test passes.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Parses, builds and runs a pipeline file's text in this directory.
    pub fn run(&self, toml: &str) -> (Status, sinkbox::Result<()>) {
        self.run_with(toml, &Control::default())
    }

    pub fn run_with(&self, toml: &str, control: &Control) -> (Status, sinkbox::Result<()>) {
        let file = PipelineFile::parse(toml, "test.toml").expect("pipeline parses");
        let pipeline = file.build(engine(), &self.dir, "test").expect("pipeline builds");
        pipeline.run(control)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `n` JSON lines `{"id":I,"name":"user-I"}`, newline-terminated.
pub fn lines(n: usize) -> String {
    (0..n).map(|i| format!("{{\"id\":{i},\"name\":\"user-{i}\"}}\n")).collect()
}

/// The error and all its causes, as one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    sinkbox::error::chain(e)
}
