//! `sinkbox run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sinkbox::config::{
    DeterministicSection, DirMode, DirSection, GrantsSection, HumanBytes, HumanDuration, LimitsSection,
    PipelineSection, RetrySection, SinkSection, SourceSection,
};
use sinkbox::{Control, Interrupt, LineFormat, Outcome, PipelineFile, Status};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The pipeline file. Omit it to run one sink with --sink.
    #[arg(required_unless_present = "sink")]
    pipeline: Option<PathBuf>,
    /// Quick form: the sink component, a .wasm file or `builtin:NAME`.
    #[arg(long, conflicts_with = "pipeline")]
    sink: Option<String>,
    /// Quick form: the sink's JSON config.
    #[arg(long, requires = "sink", default_value = "{}")]
    config: String,
    /// Quick form: the JSON-lines input; `-` or absent reads stdin.
    #[arg(long, requires = "sink")]
    input: Option<PathBuf>,
    /// Quick form: how lines become records: auto, envelope or raw.
    #[arg(long, requires = "sink", default_value = "auto", value_parser = parse_format)]
    format: LineFormat,
    /// Quick form: grant a directory, `HOST:GUEST` (read-only) or `HOST:GUEST:rw`.
    #[arg(long = "dir", requires = "sink", value_name = "HOST:GUEST[:rw]")]
    dirs: Vec<String>,
    /// Quick form: give the sink an environment variable.
    #[arg(long, requires = "sink", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Quick form: let the sink connect to a host, e.g.
    /// `http://127.0.0.1:8086` or `tcp://127.0.0.1:5432`.
    #[arg(long = "allow-host", requires = "sink", value_name = "SCHEME://HOST:PORT")]
    hosts: Vec<String>,
    /// Quick form: keep committed offsets here and resume from them.
    #[arg(long, requires = "sink")]
    offsets: Option<PathBuf>,
    /// Quick form: dead-letter file (default .sinkbox/NAME.dead-letter.jsonl).
    #[arg(long, requires = "sink")]
    dead_letter: Option<PathBuf>,
    /// Quick form: records per add call.
    #[arg(long, requires = "sink")]
    batch_size: Option<usize>,
    /// Quick form: records per checkpoint.
    #[arg(long, requires = "sink")]
    commit_every: Option<u64>,
    /// Quick form: linear memory limit, e.g. 64MiB.
    #[arg(long, requires = "sink")]
    memory: Option<String>,
    /// Quick form: wall-clock limit per call, e.g. 10s.
    #[arg(long, requires = "sink")]
    timeout: Option<String>,
    /// Print the final status as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Start over: delete the pipeline's committed offsets (keeping its
    /// dead letters) before running, e.g. after its input was replaced.
    #[arg(long)]
    reset: bool,
}

fn parse_format(text: &str) -> Result<LineFormat, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("unknown format \"{text}\"; expected auto, envelope or raw"))
}

/// `sinkbox replay`: the records of a dead-letter file, or a range of an
/// input file, through one sink.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The dead-letter file whose records to replay.
    #[arg(required_unless_present_any = ["input", "pipeline"], conflicts_with_all = ["input", "pipeline"])]
    dead_letters: Option<PathBuf>,
    /// Replay a range of this pipeline's source (a file or Kafka) through
    /// its own sinks, instead of one sink (see --from, --to).
    #[arg(long, conflicts_with_all = ["input", "sink"])]
    pipeline: Option<PathBuf>,
    /// Replay lines of this JSON-lines input instead (see --from, --to).
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: how lines become records: auto, envelope or raw.
    #[arg(long, requires = "input", default_value = "auto", value_parser = parse_format)]
    format: LineFormat,
    /// With --input or --pipeline: the first offset to replay (of a file:
    /// its 0-based line number; of Kafka: in every partition).
    #[arg(long)]
    from: Option<u64>,
    /// With --input or --pipeline: replay the offsets before this one.
    #[arg(long)]
    to: Option<u64>,
    /// The sink component, a .wasm file or `builtin:NAME`.
    #[arg(long, required_unless_present = "pipeline")]
    sink: Option<String>,
    /// The sink's JSON config.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Only the entries of this sink (`source`: input that could not be
    /// parsed). Default: every sink's entries, not the source's.
    #[arg(long, conflicts_with = "input")]
    from_sink: Option<String>,
    /// What the sink's wall clock reads first, in seconds since the Unix
    /// epoch (default 946684800, 2000-01-01); every reading adds 1 µs.
    #[arg(long)]
    clock: Option<u64>,
    /// The seed of the sink's random numbers (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Grant a directory, `HOST:GUEST` (read-only) or `HOST:GUEST:rw`.
    #[arg(long = "dir", value_name = "HOST:GUEST[:rw]")]
    dirs: Vec<String>,
    /// Give the sink an environment variable.
    #[arg(long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Let the sink connect to a host.
    #[arg(long = "allow-host", value_name = "SCHEME://HOST:PORT")]
    hosts: Vec<String>,
    /// Where records the sink refuses again go (default
    /// .sinkbox/replay-NAME.dead-letter.jsonl).
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// Records per add call.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Print the final status as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

pub fn replay(global: &super::Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if (args.from.is_some() || args.to.is_some()) && args.input.is_none() && args.pipeline.is_none() {
        bail!("--from and --to go with --input or --pipeline");
    }
    let run = RunArgs {
        pipeline: None,
        sink: args.sink,
        config: args.config,
        input: None,
        format: LineFormat::default(),
        dirs: args.dirs,
        env: args.env,
        hosts: args.hosts,
        offsets: None,
        dead_letter: args.dead_letter,
        batch_size: args.batch_size,
        commit_every: None,
        memory: None,
        timeout: None,
        json: args.json,
        no_progress: args.no_progress,
        reset: false,
    };
    let (mut file, base, name) = match &args.pipeline {
        Some(path) => {
            let mut file = PipelineFile::load(path)?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let stem = super::stem(path, "pipeline");
            let name = format!("replay-{}", file.pipeline.name.as_deref().unwrap_or(&stem));
            // Its own dead letters, unless told: never the pipeline's.
            file.pipeline.dead_letter.clone_from(&run.dead_letter);
            file.source = replayed(file.source, args.from, args.to)?;
            (file, base, name)
        }
        None => {
            let (mut file, base, name) = quick_form(&run)?;
            let name = format!("replay-{name}");
            for sink in &mut file.sinks {
                sink.name.clone_from(&name);
            }
            file.source = match (args.dead_letters, args.input) {
                (_, Some(path)) => {
                    SourceSection::File { path, format: args.format, from: args.from, to: args.to, follow: false }
                }
                (Some(path), None) => SourceSection::DeadLetters { path, sink: args.from_sink },
                (None, None) => bail!("give a dead-letter file, --input or --pipeline"),
            };
            (file, base, name)
        }
    };
    file.pipeline.name = Some(name.clone());
    // A replay keeps no offsets: it reads its range whole every time.
    file.pipeline.resume = Some(false);
    file.pipeline.deterministic = Some(DeterministicSection { clock: args.clock, seed: args.seed });
    execute(global, &file, &base, &name, &run)
}

/// A pipeline's source, as a replay of `from..to` reads it: a file cut to
/// the range; a Kafka topic read by assignment from `from` (0: each
/// partition's start) in every partition, until `to` or its end; no group
/// is joined or committed to, the pipeline's least of all.
fn replayed(source: SourceSection, from: Option<u64>, to: Option<u64>) -> anyhow::Result<SourceSection> {
    Ok(match source {
        SourceSection::File { path, format, follow, .. } => SourceSection::File { path, format, from, to, follow },
        SourceSection::Kafka(mut kafka) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            kafka.group = format!("sinkbox-replay-{}-{}", std::process::id(), nanos.as_nanos());
            kafka.start = sinkbox::config::KafkaStart::Earliest;
            kafka.stop_at_end = true;
            (kafka.from, kafka.to) = (Some(from.unwrap_or(0)), to);
            SourceSection::Kafka(kafka)
        }
        SourceSection::Stdin { .. } => {
            bail!("the pipeline reads standard input, which cannot be read again; replay its dead letters instead")
        }
        dead_letters @ SourceSection::DeadLetters { .. } => dead_letters,
    })
}

pub fn run(global: &super::Global, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (file, base, name) = match &args.pipeline {
        Some(path) => {
            let file = PipelineFile::load(path)?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = super::stem(path, "pipeline");
            (file, base, name)
        }
        None => quick_form(&args)?,
    };
    execute(global, &file, &base, &name, &args)
}

/// Runs `file` to its end, reporting as `args` asks.
fn execute(
    global: &super::Global,
    file: &PipelineFile,
    base: &Path,
    name: &str,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let state = file.state(base, name)?;
    // Held until the run ends: a second run of this pipeline fails here.
    let _lock = state.lock()?;
    if args.reset {
        eprint!("{}", super::reset::describe(&state.reset()?));
    }
    let wants_fuel = file.sinks.iter().any(|s| s.limits.fuel_per_record.is_some() || s.limits.fuel_per_call.is_some());
    let engine = &super::engine(global, wants_fuel)?;
    let pipeline = file.build(engine, base, name)?;
    // Before the signal watch starts, Ctrl-C ends the process, which stops
    // the check's sandboxed calls with it.
    for spec in &pipeline.sinks {
        sinkbox::schema::check_config(engine, spec, Interrupt::never())?;
    }
    let control = Arc::new(Control::default());
    watch_signals(control.clone());
    let size = pipeline.source.size_hint();
    let done = Arc::new(AtomicBool::new(false));
    let progress = (!args.no_progress && !args.json).then(|| spawn_progress(control.clone(), done.clone(), size));
    let (status, result) = pipeline.run(&control);
    done.store(true, Ordering::SeqCst);
    if let Some(handle) = progress {
        // Wake it from its wait, so a short run does not wait for it.
        handle.thread().unpark();
        let _ = handle.join();
    }
    report(&status, args.json)?;
    match result {
        Ok(()) if status.outcome == Outcome::Interrupted => Ok(ExitCode::from(130)),
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ sinkbox::Error::Interrupted { .. }) => {
            eprintln!("error: {}", sinkbox::error::chain(&e));
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}

fn report(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        super::print(&format!("{}\n", serde_json::to_string_pretty(status)?))
    } else {
        super::print(&status.to_string())
    }
}

/// Builds the pipeline file the quick form stands for.
fn quick_form(args: &RunArgs) -> anyhow::Result<(PipelineFile, PathBuf, String)> {
    let Some(component) = args.sink.clone() else { bail!("give a pipeline file or --sink") };
    let stem = component
        .strip_prefix("builtin:")
        .map(str::to_string)
        .unwrap_or_else(|| super::stem(Path::new(&component), "sink"));
    let name = quick_name(&stem);
    let source = match &args.input {
        Some(path) if path.as_os_str() != "-" => {
            SourceSection::File { path: path.clone(), format: args.format, from: None, to: None, follow: false }
        }
        _ => SourceSection::Stdin { format: args.format },
    };
    let mut dirs = Vec::new();
    for grant in &args.dirs {
        let parts: Vec<&str> = grant.split(':').collect();
        let (host, guest, mode) = match parts.as_slice() {
            [host, guest] => (host, guest, DirMode::Ro),
            [host, guest, "rw"] => (host, guest, DirMode::Rw),
            [host, guest, "ro"] => (host, guest, DirMode::Ro),
            _ => bail!("--dir {grant}: expected HOST:GUEST or HOST:GUEST:rw"),
        };
        dirs.push(DirSection { host: PathBuf::from(host), guest: guest.to_string(), mode });
    }
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else { bail!("--env {pair}: expected KEY=VALUE") };
        env.insert(key.to_string(), value.to_string());
    }
    let limits = LimitsSection {
        memory: args
            .memory
            .as_deref()
            .map(sinkbox::config::parse_bytes)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--memory")?
            .map(HumanBytes),
        timeout: args
            .timeout
            .as_deref()
            .map(sinkbox::config::parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--timeout")?
            .map(HumanDuration),
        ..Default::default()
    };
    let file = PipelineFile {
        pipeline: PipelineSection {
            name: Some(name.clone()),
            batch_size: args.batch_size,
            commit_every: args.commit_every,
            offsets: args.offsets.clone(),
            resume: Some(args.offsets.is_some()),
            dead_letter: args.dead_letter.clone(),
            ..Default::default()
        },
        source,
        retry: RetrySection::default(),
        sinks: vec![SinkSection {
            name: name.clone(),
            component,
            config: Some(toml::Value::String(args.config.clone())),
            on_error: Default::default(),
            lanes: None,
            limits,
            grants: GrantsSection { dirs, env, hosts: args.hosts.clone() },
        }],
    };
    Ok((file, PathBuf::new(), name))
}

/// The quick form's pipeline and sink name, from a component's file name:
/// characters a name cannot have become `_`.
fn quick_name(stem: &str) -> String {
    let name: String = stem
        .trim_start_matches('.')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(sinkbox::config::MAX_NAME)
        .collect();
    if name.is_empty() { "sink".into() } else { name }
}

/// First Ctrl-C (or SIGTERM): finish the open checkpoint and stop. Second:
/// abort it. Third: exit at once.
fn watch_signals(control: Arc<Control>) {
    let spawned = std::thread::Builder::new().name("sinkbox-signals".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::warn!("cannot watch for Ctrl-C: {e}"),
        };
        runtime.block_on(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            for round in 1.. {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
                match round {
                    1 => eprintln!("stopping: finishing the current checkpoint (again to abort it)"),
                    2 => eprintln!("aborting the current checkpoint (again to exit at once)"),
                    _ => std::process::exit(130),
                }
                control.stop();
            }
        });
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for Ctrl-C: {e}");
    }
}

fn spawn_progress(control: Arc<Control>, done: Arc<AtomicBool>, size: Option<u64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let bar = match size {
            Some(size) => {
                let bar = ProgressBar::new(size);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            }
            None => ProgressBar::new_spinner(),
        };
        // Short runs finish before the bar would be useful. The waits park,
        // so the end of the run (which unparks this thread) ends them at
        // once instead of after up to half a second.
        wait_unless_done(&done, Duration::from_millis(500));
        while !done.load(Ordering::SeqCst) {
            bar.set_position(control.bytes.load(Ordering::Relaxed));
            bar.set_message(format!(
                "{} read, {} committed",
                control.read.load(Ordering::Relaxed),
                control.committed.load(Ordering::Relaxed)
            ));
            wait_unless_done(&done, Duration::from_millis(100));
        }
        bar.finish_and_clear();
    })
}

/// Parks for `total`, returning early once `done` is set (and the thread
/// unparked).
fn wait_unless_done(done: &AtomicBool, total: Duration) {
    let until = std::time::Instant::now() + total;
    while !done.load(Ordering::SeqCst) {
        let now = std::time::Instant::now();
        if now >= until {
            return;
        }
        std::thread::park_timeout(until - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_form_names_are_valid_pipeline_names() {
        for (stem, name) in [("my sink", "my_sink"), ("..x", "x"), ("", "sink"), ("ok-1.2_x", "ok-1.2_x")] {
            assert_eq!(quick_name(stem), name);
            assert!(sinkbox::config::check_name("pipeline", &quick_name(stem)).is_ok());
        }
        assert_eq!(quick_name(&"n".repeat(100)).len(), sinkbox::config::MAX_NAME);
    }
}
