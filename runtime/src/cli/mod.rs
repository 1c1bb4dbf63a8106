//! Subcommands, one file each.

mod check;
mod inspect;
mod new;
mod run;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sinkbox::{Engine, EngineOptions};

/// Run sandboxed WebAssembly sinks over a stream of records.
#[derive(Parser)]
#[command(name = "sinkbox", version, about)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options of every subcommand.
#[derive(clap::Args)]
pub struct Global {
    /// Log filter, e.g. `info`, `debug`, `sinkbox=debug` (or set RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    /// Where compiled components are cached (default: ~/.cache/sinkbox).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Do not cache compiled components.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Meter guests with fuel, so the `fuel_per_record`/`fuel_per_call`
    /// limits apply and status reports fuel. Off by default: it costs
    /// 10-60% of guest speed (see BENCHMARKS.md); wall-clock deadlines
    /// always apply. Turned on by itself when a sink sets a fuel limit.
    #[arg(long, global = true)]
    fuel: bool,
    /// Allocate instances on demand instead of from a pool.
    #[arg(long, global = true)]
    no_pooling: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file, or one sink over one input (quick form).
    Run(Box<run::RunArgs>),
    /// Show what a component imports and exports, and its config schema.
    Inspect(inspect::InspectArgs),
    /// Check a pipeline file and each sink's config without running.
    Validate(validate::ValidateArgs),
    /// Run the contract-compliance scenarios against a sink component.
    Check(check::CheckArgs),
    /// Make a new sink project (Rust, Python, JavaScript or C) with a sample config and input.
    New(new::NewArgs),
    /// Build a sink project into a component (NAME.wasm in the project).
    Build(new::BuildArgs),
}

pub fn init_logging(global: &Global) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| global.log.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: invalid log filter \"{filter}\" ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run(a) => run::run(&args.global, *a),
        Command::Inspect(a) => inspect::inspect(&engine(&args.global, false)?, a),
        Command::Validate(a) => validate::validate(&engine(&args.global, false)?, a),
        Command::Check(a) => check::check(&engine(&args.global, true)?, a),
        Command::New(a) => new::new(a),
        Command::Build(a) => new::build(a),
    }
}

/// The engine the options ask for; `fuel` forces fuel metering on.
fn engine(global: &Global, fuel: bool) -> anyhow::Result<Engine> {
    let mut options = EngineOptions::default().fuel(global.fuel || fuel);
    if global.no_pooling {
        options = options.pooling(None);
    }
    if global.no_cache {
        options = options.cache_dir(None);
    } else if let Some(dir) = &global.cache_dir {
        options = options.cache_dir(Some(dir.clone()));
    }
    Ok(Engine::new(options)?)
}
