//! `sinkbox serve`: many tenants' pipelines in one process, each on its own
//! tasks and sandboxes, with an admin API, Prometheus metrics and an
//! accounting log.
//!
//! Every hosted pipeline has a supervisor task that prepares it (loads the
//! file, fits it to its tenant's limits and grants, compiles its
//! components, checks their configs in sandboxes), runs it, and acts on
//! the admin API's requests: stop, start, pause, resume, reload, reset. A
//! reload (asked for, or when the pipeline file or a component file
//! changes) prepares the new version while the old one runs; only if that
//! succeeds is the old one stopped at a checkpoint boundary (flush,
//! commit, close) and the new one started from the committed offsets. A
//! new version that fails before its first commit is replaced by the old
//! one again, and the reason is shown.
//!
//! A bad tenant file or pipeline is reported and skipped; the others run.

mod admin;
mod metrics;
mod tenant;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Serialize;
use sinkbox::{
    Control, Engine, Interrupt, Outcome, PartitionStatus, PipelineFile, SinkMetrics, SinkSpec, StateLock, Status,
};
use tokio::sync::mpsc;

use self::metrics::{Books, Observed, Usage};
use self::tenant::{Reservation, Tenant};

/// `sinkbox serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A directory of tenant files (`*.toml`), or one tenant file.
    tenants: PathBuf,
    /// Where the admin API and `/metrics` listen.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// A file holding the operator's bearer token, which sees and controls
    /// every tenant's pipelines. Without it only tenant tokens work.
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// The accounting log: one JSON line per committed checkpoint (default
    /// `.sinkbox/accounting.jsonl` in the tenants' directory).
    #[arg(long)]
    accounting: Option<PathBuf>,
    /// How often pipeline and component files are checked for changes
    /// (a change reloads the pipeline); `0s` turns watching off.
    #[arg(long, default_value = "1s", value_parser = sinkbox::config::parse_duration)]
    watch: Duration,
    /// Sink instances alive at once, over every tenant (the size of the
    /// pooling allocator; each reserves address space, not memory).
    #[arg(long, default_value_t = 4_000)]
    max_instances: u32,
    /// Check every tenant file and pipeline (fit to its tenant, compile
    /// its components, check their configs) and exit: 0 if all are good,
    /// 1 naming each problem. Starts nothing and listens nowhere.
    #[arg(long)]
    check: bool,
}

/// What the admin API asks of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Pause,
    Resume,
    Reload,
    Reset,
    /// `serve` is ending.
    Shutdown,
}

/// One hosted pipeline.
pub struct Hosted {
    pub tenant: String,
    /// The tenant's file as last loaded: a change reloads the pipeline.
    policy: Mutex<Arc<Tenant>>,
    pub name: String,
    file: Mutex<PathBuf>,
    shown: Mutex<Shown>,
    /// The current run's control.
    control: Mutex<Control>,
    /// Counters of the runs that ended.
    past: Mutex<Past>,
    pub observed: Arc<Observed>,
    actions: mpsc::UnboundedSender<Action>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

/// What the API shows of a pipeline's state.
#[derive(Default)]
struct Shown {
    state: &'static str,
    error: Option<String>,
    reload_error: Option<String>,
    reloads: u64,
    /// How the last run ended.
    last: Option<Box<Status>>,
}

#[derive(Default, Clone)]
struct Past {
    read: u64,
    committed: u64,
    bytes: u64,
    sinks: BTreeMap<String, SinkMetrics>,
    partitions: BTreeMap<(String, u32), PartitionStatus>,
}

/// A pipeline's counters and state at one moment: past runs and the
/// current one together.
#[derive(Serialize)]
pub struct View {
    pub tenant: String,
    pub pipeline: String,
    pub state: &'static str,
    pub read: u64,
    pub committed: u64,
    pub bytes: u64,
    pub reloads: u64,
    pub error: Option<String>,
    pub reload_error: Option<String>,
    pub sinks: Vec<SinkMetrics>,
    pub partitions: Vec<PartitionStatus>,
    /// How the last run ended.
    pub status: Option<Box<Status>>,
}

impl Hosted {
    /// Its pipeline file (a tenant file may move it).
    pub fn file(&self) -> PathBuf {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn policy(&self) -> Arc<Tenant> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, state: &'static str) {
        self.shown().state = state;
    }

    /// Asks the supervisor to act; false once it has ended.
    pub fn act(&self, action: Action) -> bool {
        self.actions.send(action).is_ok()
    }

    pub fn view(&self) -> View {
        // Held throughout: a run that ends moves its counters from its
        // control to `past` under this lock, so they count once.
        let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.past.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.add(&control);
        let shown = self.shown();
        View {
            tenant: self.tenant.clone(),
            pipeline: self.name.clone(),
            state: shown.state,
            read: all.read,
            committed: all.committed,
            bytes: all.bytes,
            reloads: shown.reloads,
            error: shown.error.clone(),
            reload_error: shown.reload_error.clone(),
            sinks: all.sinks.into_values().map(SinkMetrics::finish).collect(),
            partitions: all.partitions.into_values().collect(),
            status: shown.last.clone(),
        }
    }

    /// Folds a run that ended into the past runs' counters.
    fn end_run(&self, status: Status) {
        let mut current = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let control = std::mem::take(&mut *current);
        self.past.lock().unwrap_or_else(|p| p.into_inner()).add(&control);
        let mut shown = self.shown();
        shown.state = match &status.outcome {
            Outcome::Running => "running",
            Outcome::Finished => "finished",
            Outcome::Interrupted => "stopped",
            Outcome::Failed(_) => "failed",
        };
        shown.error = match &status.outcome {
            Outcome::Failed(e) => Some(e.clone()),
            _ => None,
        };
        shown.last = Some(Box::new(status));
    }

    fn fail(&self, error: String) {
        let mut shown = self.shown();
        shown.state = "failed";
        shown.error = Some(error);
    }
}

impl Past {
    /// Adds a run's counters (its sinks and partitions by name).
    fn add(&mut self, control: &Control) {
        self.read += control.read.load(Ordering::Relaxed);
        self.committed += control.committed.load(Ordering::Relaxed);
        self.bytes += control.bytes.load(Ordering::Relaxed);
        for s in control.sinks() {
            self.sinks.entry(s.name.clone()).or_insert_with(|| SinkMetrics::new(&s.name)).merge(&s);
        }
        for p in control.partitions() {
            let entry = self.partitions.entry((p.topic.clone(), p.partition)).or_insert_with(|| PartitionStatus {
                topic: p.topic.clone(),
                partition: p.partition,
                ..Default::default()
            });
            entry.records += p.records;
            entry.commits += p.commits;
            entry.pauses += p.pauses;
            entry.lag = p.lag;
        }
    }
}

pub fn serve(global: &super::Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let operator = match &args.operator_token_file {
        Some(path) => Some(tenant::read_token(path)?),
        None => None,
    };
    let pooling = sinkbox::Pooling { instances: args.max_instances, ..Default::default() };
    let engine = super::engine_with(global, false, pooling)?;
    if args.check {
        return check(&engine, &args.tenants);
    }
    let rt = sinkbox::runtime()?;
    let accounting = args.accounting.clone().unwrap_or_else(|| {
        let dir = if args.tenants.is_dir() {
            args.tenants.clone()
        } else {
            args.tenants.parent().unwrap_or(Path::new("")).into()
        };
        dir.join(".sinkbox").join("accounting.jsonl")
    });
    let books = Arc::new(
        Books::open(&accounting).with_context(|| format!("cannot open the accounting log {}", accounting.display()))?,
    );
    let host = Arc::new(Host {
        engine,
        books,
        watch: args.watch,
        rt,
        pipelines: Arc::default(),
        usage: Arc::default(),
        tokens: Arc::default(),
        files: Mutex::default(),
        supervisors: Mutex::default(),
        gate: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))),
    });
    host.scan(&args.tenants);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics::Metrics {
        pipelines: host.pipelines.clone(),
        usage: host.usage.clone(),
    }));
    let admin =
        Arc::new(admin::Admin { pipelines: host.pipelines.clone(), operator, tokens: host.tokens.clone(), registry });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let count = host.pipelines.lock().unwrap_or_else(|p| p.into_inner()).len();
    tracing::info!(
        "serving {count} pipeline(s); admin API and /metrics on http://{}; accounting in {}",
        args.listen,
        accounting.display()
    );
    rt.spawn(admin::accept(listener, admin));
    if !args.watch.is_zero() {
        let (host, path) = (host.clone(), args.tenants.clone());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(host.watch).await;
                let (host, path) = (host.clone(), path.clone());
                // Reading and parsing files: off the executor.
                let _ = tokio::task::spawn_blocking(move || host.scan(&path)).await;
            }
        });
    }
    // Until Ctrl-C or SIGTERM: then every pipeline finishes its checkpoint.
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    eprintln!("stopping every pipeline: finishing their checkpoints");
    for hosted in host.pipelines.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        hosted.act(Action::Shutdown);
    }
    let supervisors = std::mem::take(&mut *host.supervisors.lock().unwrap_or_else(|p| p.into_inner()));
    for task in supervisors {
        let _ = rt.block_on(task);
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve --check`: every tenant file and pipeline, as `serve` would load
/// them, without running anything.
fn check(engine: &Engine, path: &Path) -> anyhow::Result<ExitCode> {
    let mut problems = 0;
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    for file in tenant::tenant_files(path)? {
        let tenant = match tenant::load(&file) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                problems += 1;
                say!("FAIL tenant file {}: {e:#}", file.display());
                continue;
            }
        };
        if let Some(first) = names.insert(tenant.name.clone(), file.clone()) {
            problems += 1;
            say!("FAIL tenant file {}: tenant {} is declared in {} too", file.display(), tenant.name, first.display());
            continue;
        }
        if let Some(other) = tokens.insert(tenant.token.clone(), tenant.name.clone()) {
            problems += 1;
            say!("FAIL tenant file {}: tenant {other} has the same token", file.display());
        }
        say!("ok   tenant {} ({})", tenant.name, file.display());
        let mut reserved = Vec::new();
        let mut stems = Vec::new();
        for pipeline in &tenant.pipelines {
            let stem = super::stem(pipeline, "pipeline");
            if stems.contains(&stem) {
                problems += 1;
                say!(
                    "FAIL   pipeline {}: a second pipeline named {stem}; pipeline file names must differ",
                    pipeline.display()
                );
                continue;
            }
            stems.push(stem);
            let checked = Prepared::load(engine, &tenant, pipeline).and_then(|p| {
                p.loaded.state(&p.base, &p.stem)?;
                reserved.push(p.reserve(&tenant)?);
                Ok(())
            });
            match checked {
                Ok(()) => say!("ok     pipeline {}", pipeline.display()),
                Err(e) => {
                    problems += 1;
                    say!("FAIL   pipeline {}: {e:#}", pipeline.display());
                }
            }
        }
    }
    if problems > 0 {
        say!("{problems} problem(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The process's hosted pipelines, and what they share.
struct Host {
    engine: Engine,
    books: Arc<Books>,
    watch: Duration,
    rt: &'static tokio::runtime::Runtime,
    pipelines: Arc<Mutex<Vec<Arc<Hosted>>>>,
    usage: Arc<Mutex<BTreeMap<String, Arc<Usage>>>>,
    /// Token → tenant.
    tokens: Arc<Mutex<BTreeMap<String, String>>>,
    files: Mutex<BTreeMap<PathBuf, TenantFileSeen>>,
    supervisors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Pipelines being prepared or started at once: one per core.
    gate: Arc<tokio::sync::Semaphore>,
}

/// A tenant file's stamp when last read, and the tenant it declares
/// (`None`: it was left out).
type TenantFileSeen = (Option<(SystemTime, u64)>, Option<String>);

impl Host {
    /// Reads the tenant files that are new or changed since the last scan
    /// and applies them; a tenant whose file is gone stops. A bad file is
    /// reported; a tenant that was running keeps its earlier version.
    fn scan(&self, path: &Path) {
        let found = match tenant::tenant_files(path) {
            Ok(found) => found,
            Err(e) => return tracing::error!("{e:#}"),
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<PathBuf> = files.keys().filter(|f| !found.contains(f)).cloned().collect();
        for file in gone {
            if let Some((_, Some(name))) = files.remove(&file) {
                tracing::info!("tenant file {} is gone: stopping tenant {name}", file.display());
                self.remove_tenant(&name);
            }
        }
        for file in found {
            let now = stamp(&file);
            let before = files.get(&file).cloned();
            if before.as_ref().is_some_and(|(seen, _)| *seen == now) {
                continue;
            }
            let was = before.and_then(|(_, name)| name);
            let declared = |name: &str| files.iter().any(|(f, (_, n))| f != &file && n.as_deref() == Some(name));
            let outcome = match tenant::load(&file) {
                Err(e) => Err(format!("{e:#}")),
                Ok(t) if declared(&t.name) => Err(format!("tenant {} is declared twice", t.name)),
                Ok(t) => {
                    if let Some(old) = was.as_ref().filter(|old| **old != t.name) {
                        self.remove_tenant(old);
                    }
                    let name = t.name.clone();
                    self.apply(t).map(|()| name)
                }
            };
            match outcome {
                Ok(name) => {
                    files.insert(file, (now, Some(name)));
                }
                Err(e) if was.is_some() => {
                    tracing::error!("tenant file {}: {e}; its tenant goes on as it was", file.display());
                    files.insert(file, (now, was));
                }
                Err(e) => {
                    tracing::error!("tenant file {}: {e}; left out", file.display());
                    files.insert(file, (now, None));
                }
            }
        }
    }

    /// Hosts a tenant, or applies a new version of its file: its token,
    /// its policy (its pipelines reload if it changed), pipelines added
    /// and removed.
    fn apply(&self, mut tenant: Tenant) -> Result<(), String> {
        let hosted: Vec<Arc<Hosted>> = {
            let list = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
            list.iter().filter(|h| h.tenant == tenant.name).cloned().collect()
        };
        let old = hosted.first().map(|h| h.policy());
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = tokens.get(&tenant.token).filter(|t| **t != tenant.name) {
                return Err(format!("tenant {other} has the same token"));
            }
            tokens.retain(|_, name| *name != tenant.name);
            tokens.insert(tenant.token.clone(), tenant.name.clone());
        }
        if let Some(old) = &old {
            tenant.inherit(old);
        }
        let changed = old.as_ref().is_some_and(|old| old.policy() != tenant.policy());
        let tenant = Arc::new(tenant);
        let mut names = Vec::new();
        for file in &tenant.pipelines {
            let name = super::stem(file, "pipeline");
            if names.contains(&name) {
                tracing::error!(
                    "tenant {}: a second pipeline named {name} ({}) is left out; pipeline file names must differ",
                    tenant.name,
                    file.display()
                );
                continue;
            }
            names.push(name.clone());
            match hosted.iter().find(|h| h.name == name) {
                Some(h) => {
                    *h.policy.lock().unwrap_or_else(|p| p.into_inner()) = tenant.clone();
                    let moved = {
                        let mut at = h.file.lock().unwrap_or_else(|p| p.into_inner());
                        std::mem::replace(&mut *at, file.clone()) != *file
                    };
                    if changed || moved {
                        h.act(Action::Reload);
                    }
                }
                None => self.host(&tenant, &name, file),
            }
        }
        for h in hosted.iter().filter(|h| !names.contains(&h.name)) {
            tracing::info!(tenant = %h.tenant, pipeline = %h.name, "no longer in its tenant file: stopping it");
            self.retire(h);
        }
        Ok(())
    }

    fn host(&self, tenant: &Arc<Tenant>, name: &str, file: &Path) {
        let used = self.usage.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant.name.clone()).or_default().clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let hosted = Arc::new(Hosted {
            tenant: tenant.name.clone(),
            policy: Mutex::new(tenant.clone()),
            name: name.to_string(),
            file: Mutex::new(file.to_path_buf()),
            shown: Mutex::new(Shown { state: "starting", ..Default::default() }),
            control: Mutex::default(),
            past: Mutex::default(),
            observed: Arc::new(Observed::new(&tenant.name, name, used, Some(self.books.clone()))),
            actions: tx,
        });
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).push(hosted.clone());
        let span = tracing::info_span!("pipeline", tenant = %tenant.name, pipeline = %name);
        let supervisor = supervise(self.engine.clone(), hosted, rx, self.watch, self.gate.clone());
        let task = self.rt.spawn(tracing::Instrument::instrument(supervisor, span));
        self.supervisors.lock().unwrap_or_else(|p| p.into_inner()).push(task);
    }

    /// Stops a pipeline (at a checkpoint boundary) and stops showing it.
    fn retire(&self, hosted: &Arc<Hosted>) {
        hosted.act(Action::Shutdown);
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).retain(|h| !Arc::ptr_eq(h, hosted));
    }

    fn remove_tenant(&self, name: &str) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, t| t != name);
        let hosted: Vec<Arc<Hosted>> = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.tenant == name)
            .cloned()
            .collect();
        for h in &hosted {
            self.retire(h);
        }
    }
}

/// A pipeline ready to start: loaded, fitted to its tenant, its components
/// compiled and configs checked.
#[derive(Clone)]
struct Prepared {
    loaded: Arc<PipelineFile>,
    base: PathBuf,
    stem: String,
    sinks: Vec<SinkSpec>,
    /// The files whose change reloads it.
    watched: Vec<Watched>,
}

/// A file and its modification time and size (`None`: missing).
type Watched = (PathBuf, Option<(SystemTime, u64)>);

/// A started run: what it holds until it ends.
struct Started {
    _lock: StateLock,
    _reservation: Reservation,
    state: sinkbox::PipelineState,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Prepared {
    fn load(engine: &Engine, tenant: &Tenant, file: &Path) -> anyhow::Result<Prepared> {
        let mut loaded = PipelineFile::load(file)?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let stem = super::stem(file, "pipeline");
        tenant.fit(&mut loaded, &base)?;
        let sinks = loaded.resolve_sinks(engine, &base)?;
        for spec in &sinks {
            sinkbox::schema::check_config(engine, spec, Interrupt::never())?;
        }
        let mut watched = vec![(file.to_path_buf(), stamp(file))];
        for sink in loaded.sinks.iter().filter(|s| !s.component.starts_with("builtin:")) {
            let path = base.join(&sink.component);
            watched.push((path.clone(), stamp(&path)));
        }
        Ok(Prepared { loaded: Arc::new(loaded), base, stem, sinks, watched })
    }

    /// Takes what its sinks' instances need of the tenant's quotas: one
    /// instance per lane, each with its memory limit.
    fn reserve(&self, tenant: &Arc<Tenant>) -> anyhow::Result<Reservation> {
        let lanes = |s: &SinkSpec| u64::from(s.lanes.max(1));
        let instances = self.sinks.iter().map(lanes).sum();
        let memory = self.sinks.iter().map(|s| lanes(s) * s.limits.memory_cap()).sum();
        tenant.reserve(instances, memory)
    }

    /// Takes the tenant's quotas and the pipeline's lock, opens its source.
    fn start(&self, engine: &Engine, tenant: &Arc<Tenant>) -> anyhow::Result<(Started, sinkbox::Pipeline)> {
        let reservation = self.reserve(tenant)?;
        let state = self.loaded.state(&self.base, &self.stem)?;
        let lock = state.lock()?;
        let pipeline = self.loaded.build_with(engine, &self.base, &self.stem, self.sinks.clone())?;
        Ok((Started { _lock: lock, _reservation: reservation, state }, pipeline))
    }
}

/// Runs blocking work (compiling, config checks in sandboxes, opening
/// files) off the executor, in the caller's span, one per core at a time:
/// a config check runs under the sink's wall-clock limit, and a hundred
/// pipelines starting together must not make each other miss it.
async fn blocking<T: Send + 'static>(
    gate: &tokio::sync::Semaphore,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let _permit = gate.acquire().await;
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("its task failed: {e}")))
}

/// What ended the wait for a run.
enum Ended {
    Run(Box<Status>),
    Shutdown,
}

/// Supervises one pipeline until `serve` ends.
async fn supervise(
    engine: Engine,
    hosted: Arc<Hosted>,
    mut actions: mpsc::UnboundedReceiver<Action>,
    watch: Duration,
    gate: Arc<tokio::sync::Semaphore>,
) {
    let mut current: Option<Prepared> = None;
    // The version a reload replaced, kept until the new one commits.
    let mut previous: Option<Prepared> = None;
    let mut run = true;
    let mut reset = false;
    // Asked to pause: a reload or restart keeps the pipeline paused.
    let mut paused = false;
    loop {
        let tenant = hosted.policy();
        if !run {
            // Stopped, finished or failed: wait to be asked to start, or
            // for the files to change.
            let watched = current.as_ref().map_or_else(|| stamps(&[(hosted.file(), None)]), |p| p.watched.clone());
            let action = tokio::select! {
                a = actions.recv() => a.unwrap_or(Action::Shutdown),
                () = changed(&watched, watch) => Action::Reload,
            };
            match action {
                Action::Shutdown => return,
                Action::Start => run = true,
                Action::Reload => (current, run) = (None, true),
                Action::Reset => (reset, run) = (true, true),
                Action::Pause => paused = true,
                Action::Resume => paused = false,
                Action::Stop => {}
            }
            continue;
        }
        let prepared = match current.clone() {
            Some(p) => p,
            None => {
                hosted.set_state("starting");
                let (engine, of, file) = (engine.clone(), tenant.clone(), hosted.file());
                match blocking(&gate, move || Prepared::load(&engine, &of, &file)).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!("pipeline {}: {e:#}", hosted.file().display());
                        hosted.fail(format!("{e:#}"));
                        run = false;
                        continue;
                    }
                }
            }
        };
        current = Some(prepared.clone());
        let started = {
            let (engine, tenant, prepared) = (engine.clone(), tenant.clone(), prepared.clone());
            blocking(&gate, move || prepared.start(&engine, &tenant)).await
        };
        let (held, pipeline) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                if let Some(old) = previous.take() {
                    current = Some(roll_back(&hosted, old, format!("{e:#}")));
                    continue;
                }
                hosted.fail(format!("{e:#}"));
                run = false;
                continue;
            }
        };
        if std::mem::take(&mut reset) {
            match held.state.reset() {
                Ok(done) => {
                    tracing::info!("reset: {}", done.offsets.display())
                }
                Err(e) => {
                    hosted.fail(format!("cannot reset: {e}"));
                    run = false;
                    continue;
                }
            }
            // The source was opened at the old position: open it again.
            drop(pipeline);
            drop(held);
            continue;
        }
        let control = Control::default();
        if let Some(rate) = &tenant.rate {
            control.limit_rate(rate.clone());
        }
        control.observe(hosted.observed.clone());
        hosted.observed.new_run();
        if paused {
            control.pause();
        }
        *hosted.control.lock().unwrap_or_else(|p| p.into_inner()) = control.clone();
        hosted.set_state(if paused { "paused" } else { "running" });
        let mut task = {
            let control = control.clone();
            tokio::spawn(tracing::Instrument::in_current_span(async move { pipeline.run_async(&control).await.0 }))
        };
        let mut next: Option<Prepared> = None;
        let mut watched = prepared.watched.clone();
        let ended = loop {
            let action = tokio::select! {
                status = &mut task => break Ended::Run(Box::new(status.unwrap_or_else(|e| Status {
                    outcome: Outcome::Failed(format!("the pipeline's task failed: {e}")),
                    ..Default::default()
                }))),
                a = actions.recv() => a.unwrap_or(Action::Shutdown),
                () = changed(&watched, watch) => Action::Reload,
            };
            // The new version proved itself: forget the old.
            if previous.is_some() && control.committed.load(Ordering::Relaxed) > 0 {
                previous = None;
            }
            match action {
                Action::Shutdown => {
                    control.stop();
                    let _ = (&mut task).await;
                    break Ended::Shutdown;
                }
                Action::Stop => {
                    hosted.set_state("stopping");
                    // A stop wins over a reload waiting for this run's end.
                    (run, next) = (false, None);
                    control.stop();
                }
                Action::Pause => {
                    paused = true;
                    control.pause();
                    hosted.set_state("paused");
                }
                Action::Resume => {
                    paused = false;
                    control.resume();
                    hosted.set_state("running");
                }
                Action::Start => {}
                Action::Reset => {
                    hosted.set_state("stopping");
                    reset = true;
                    control.stop();
                }
                Action::Reload => {
                    hosted.set_state("reloading");
                    let (engine, of, file) = (engine.clone(), hosted.policy(), hosted.file());
                    match blocking(&gate, move || Prepared::load(&engine, &of, &file)).await {
                        Ok(new) => {
                            next = Some(new);
                            control.stop();
                        }
                        Err(e) => {
                            let e = format!("{e:#}");
                            tracing::error!("reload refused, the running version goes on: {e}");
                            let mut shown = hosted.shown();
                            shown.reload_error = Some(e);
                            shown.state = if control.paused() { "paused" } else { "running" };
                            // Not again for the same files.
                            drop(shown);
                            watched = stamps(&watched);
                        }
                    }
                }
            }
        };
        let status = match ended {
            Ended::Shutdown => {
                hosted.set_state("stopped");
                return;
            }
            Ended::Run(status) => status,
        };
        drop(held);
        // Failed before its first commit: what a roll-back needs.
        let failed_at_once = match &status.outcome {
            Outcome::Failed(e) if control.committed.load(Ordering::Relaxed) == 0 => Some(e.clone()),
            _ => None,
        };
        hosted.end_run(*status);
        if let Some(new) = next {
            // A reload: start the new version from the committed offsets.
            previous = current.replace(new);
            let mut shown = hosted.shown();
            shown.reloads += 1;
            shown.reload_error = None;
            run = true;
            continue;
        }
        if let (Some(e), Some(old)) = (failed_at_once, previous.take()) {
            current = Some(roll_back(&hosted, old, e));
            run = true;
            continue;
        }
        if !reset {
            run = false;
        }
    }
}

/// The same files, stamped now.
fn stamps(watched: &[Watched]) -> Vec<Watched> {
    watched.iter().map(|(path, _)| (path.clone(), stamp(path))).collect()
}

/// The new version failed before its first commit: the old one runs again
/// (returned), watching the files from now on, so only a further change
/// reloads it.
fn roll_back(hosted: &Hosted, old: Prepared, error: String) -> Prepared {
    tracing::error!(
        "the reloaded version failed before its first commit; rolling back to the previous version: {error}"
    );
    let mut shown = hosted.shown();
    shown.reload_error = Some(format!("rolled back: the new version failed: {error}"));
    shown.reloads = shown.reloads.saturating_sub(1);
    Prepared { watched: stamps(&old.watched), ..old }
}

/// Resolves once one of the `watched` files differs from its stamp
/// (never, if watching is off).
async fn changed(watched: &[Watched], every: Duration) {
    if every.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(every).await;
        if watched.iter().any(|(path, seen)| stamp(path) != *seen) {
            return;
        }
    }
}
