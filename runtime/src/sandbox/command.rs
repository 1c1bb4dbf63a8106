//! The runtime's own helper programs, run as WASI commands in a sandbox
//! under a sink's limits.
//!
//! Some of the host's work is computation on what a guest handed it:
//! checking a config against the JSON Schema a sink publishes can take any
//! amount of time and memory, as the schema decides. Such work runs in a
//! helper component (the runtime embeds it) in a store of its own, with
//! the sink's memory limit, its wall-clock deadline and, when the engine
//! meters fuel, its per-call fuel budget, so a hostile schema costs the
//! host no more than the sink itself could. The helper reads its input
//! from stdin and writes its answer to stdout; it sees no files, no
//! environment and no network.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::instance::{Ended, Guard};
use super::{Engine, Interrupt, SandboxLimits, StoreState, budget, egress, output, quota};
use crate::error::{Error, Fault, Result};

/// A helper program, compiled and linked, ready to run.
#[derive(Clone)]
pub(crate) struct Helper {
    pre: CommandPre<StoreState>,
}

impl Engine {
    /// Loads a helper component embedded in the runtime, through the cache
    /// and once per engine.
    pub(crate) fn helper(&self, bytes: &'static [u8], origin: &'static str) -> Result<Helper> {
        let pre = self.link_embedded(bytes, origin)?;
        let pre =
            CommandPre::new(pre).map_err(|e| Error::Component { origin: origin.to_string(), source: e.into() })?;
        Ok(Helper { pre })
    }
}

impl Helper {
    /// Runs the helper on `input` in a fresh sandbox named after `sink`
    /// (for its stderr lines) under `limits`, and returns what it wrote to
    /// stdout: at most `max_output` bytes (writing more traps it).
    /// Instantiation and the run share one deadline and one fuel budget.
    pub(crate) async fn run(
        &self,
        engine: &Engine,
        sink: &str,
        limits: SandboxLimits,
        mut interrupt: Interrupt,
        input: Vec<u8>,
        max_output: usize,
    ) -> Result<Vec<u8>, Fault> {
        let name: Arc<str> = Arc::from(sink);
        let stdout = MemoryOutputPipe::new(max_output);
        let stderr_tail = output::Tail::default();
        let log_budget = budget::LogBudget::new(limits.log_per_call);
        let mut wasi = WasiCtx::builder();
        wasi.stdin(MemoryInputPipe::new(input))
            .stdout(stdout.clone())
            // Logged as the sink's, but marked as the helper's.
            .stderr(output::GuestOutput::new(
                name.clone(),
                "helper-stderr",
                Some(stderr_tail.clone()),
                log_budget.clone(),
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let egress = egress::Egress::new(name.clone(), &[], limits.net);
        let quota = quota::StoreQuota::new(None);
        let state = StoreState::new(wasi.build(), limits, name, stderr_tail, log_budget, egress, quota);
        let mut store = Store::new(engine.wasmtime(), state);
        let guard = Guard::new(engine, &mut store, limits);
        guard.arm(&mut store, limits.fuel_per_call);
        let call = async {
            let command = self.pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        };
        let ended = tokio::select! {
            r = tokio::time::timeout(limits.timeout, call) => match r {
                Ok(Ok(Ok(()))) => return Ok(stdout.contents().to_vec()),
                Ok(Ok(Err(()))) => return Err(Fault::Fatal("exited with an error".into())),
                Ok(Err(e)) => Ended::Returned(Err(e)),
                Err(_) => Ended::TimedOut,
            },
            () = interrupt.wait() => Ended::Stopped,
        };
        Err(guard.classify(&store, ended, limits.fuel_per_call))
    }
}
