//! Subcommands, one file each.

mod check;
/// `println!` for subcommands: writes through [`print`], so a closed
/// stdout ends the output quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::print(&format!("{}\n", format_args!($($arg)*)))?
    };
}

mod inspect;
mod new;
mod reset;
mod run;
mod serve;
mod top;
mod validate;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

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
    /// Run the records of a dead-letter file through a sink again, offline
    /// and deterministically (fixed clocks and random numbers): to debug a
    /// sink, or to re-deliver after a fix.
    Replay(Box<run::ReplayArgs>),
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
    /// Delete a pipeline's committed offsets (its dead letters are kept), so
    /// its next run starts from the beginning of its input.
    Reset(reset::ResetArgs),
    /// Run many tenants' pipelines in one process, with an admin API
    /// (bearer tokens) and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// A live table of a `sinkbox serve`'s pipelines (like `top`), read
    /// from its admin API.
    Top(top::TopArgs),
}

pub fn init_logging(global: &Global) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| global.log.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: invalid log filter \"{filter}\" ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}

/// Log lines are coloured only on a terminal, and never when `NO_COLOR` is
/// set to anything but the empty string (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Writes `text` to stdout. A closed stdout (`sinkbox inspect ... | head
/// -1`) is not an error: the reader has what it wanted, so the output
/// ends quietly.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("cannot write to stdout"),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run(a) => run::run(&args.global, *a),
        Command::Replay(a) => run::replay(&args.global, *a),
        Command::Inspect(a) => inspect::inspect(&engine(&args.global, false)?, a),
        Command::Validate(a) => validate::validate(&engine(&args.global, false)?, a),
        Command::Check(a) => check::check(&engine(&args.global, true)?, a),
        Command::New(a) => new::new(a),
        Command::Build(a) => new::build(a),
        Command::Reset(a) => reset::reset(a),
        Command::Serve(a) => serve::serve(&args.global, a),
        Command::Top(a) => top::top(a),
    }
}

/// `path`'s file name without its extension, or `default` if it has none:
/// what names a pipeline (or tenant, or sink) after its file.
fn stem(path: &std::path::Path, default: &str) -> String {
    path.file_stem().map_or_else(|| default.into(), |s| s.to_string_lossy().into_owned())
}

/// The engine the options ask for; `fuel` forces fuel metering on.
fn engine(global: &Global, fuel: bool) -> anyhow::Result<Engine> {
    engine_with(global, fuel, sinkbox::Pooling::default())
}

/// [`engine`] with a pool of other sizes (unless pooling is off).
fn engine_with(global: &Global, fuel: bool, pooling: sinkbox::Pooling) -> anyhow::Result<Engine> {
    let mut options = EngineOptions::default().fuel(global.fuel || fuel).pooling(Some(pooling));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, expected) in cases {
            assert_eq!(use_colour(terminal, no_color.map(Into::into)), expected, "{terminal} {no_color:?}");
        }
    }
}
