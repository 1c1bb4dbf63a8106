//! `sinkbox serve`: many tenants' pipelines in one process, each on its own
//! tasks and sandboxes, with an admin API and Prometheus metrics.
//!
//! A tenant file (`DIR/*.toml`, or one file) names the tenant, its bearer
//! token and its pipeline files:
//!
//! ```toml
//! [tenant]
//! name = "acme"            # default: the file's stem
//! token_file = "acme.token" # or token = "..."
//!
//! [[pipeline]]
//! file = "acme/orders.toml" # relative to the tenant file
//! ```
//!
//! A bad tenant file or pipeline is reported and skipped; the others run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sinkbox::{Control, Engine, Interrupt, Outcome, PipelineFile, Status};
use wasmtime_wasi_http::io::TokioIo;

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
}

/// A tenant file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    tenant: TenantSection,
    #[serde(default)]
    pipeline: Vec<PipelineRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSection {
    name: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineRef {
    file: PathBuf,
}

/// A tenant, as loaded.
struct Tenant {
    name: String,
    token: String,
    pipelines: Vec<PathBuf>,
}

/// One hosted pipeline.
struct Hosted {
    tenant: String,
    name: String,
    control: Control,
    state: Mutex<State>,
}

/// Where a hosted pipeline is.
#[derive(Clone)]
enum State {
    Starting,
    Running,
    Ended(Box<Status>),
    Failed(String),
}

impl Hosted {
    fn json(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (label, status, error) = match state {
            State::Starting => ("starting", None, None),
            State::Running => ("running", None, None),
            State::Ended(status) => {
                let label = match &status.outcome {
                    Outcome::Running => "running",
                    Outcome::Finished => "finished",
                    Outcome::Interrupted => "stopped",
                    Outcome::Failed(_) => "failed",
                };
                let error = match &status.outcome {
                    Outcome::Failed(e) => Some(e.clone()),
                    _ => None,
                };
                (label, Some(status), error)
            }
            State::Failed(e) => ("failed", None, Some(e)),
        };
        serde_json::json!({
            "tenant": self.tenant,
            "pipeline": self.name,
            "state": label,
            "read": self.control.read.load(Ordering::Relaxed),
            "committed": self.control.committed.load(Ordering::Relaxed),
            "error": error,
            "status": status,
        })
    }
}

/// Who a request speaks for.
#[derive(PartialEq)]
enum Principal {
    Operator,
    Tenant(String),
}

/// What the admin API serves.
struct Admin {
    pipelines: Vec<Arc<Hosted>>,
    operator: Option<String>,
    /// Token → tenant.
    tokens: BTreeMap<String, String>,
    registry: Registry,
}

pub fn serve(global: &super::Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let operator = match &args.operator_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let tenants = load_tenants(&args.tenants)?;
    let engine = super::engine(global, false)?;
    let rt = sinkbox::runtime()?;
    let mut pipelines = Vec::new();
    let mut tokens = BTreeMap::new();
    let mut tasks = Vec::new();
    for tenant in tenants {
        if let Some(other) = tokens.insert(tenant.token.clone(), tenant.name.clone()) {
            anyhow::bail!("tenants {other} and {} have the same token", tenant.name);
        }
        for file in &tenant.pipelines {
            let name = file.file_stem().map_or_else(|| "pipeline".into(), |s| s.to_string_lossy().into_owned());
            if pipelines.iter().any(|p: &Arc<Hosted>| p.tenant == tenant.name && p.name == name) {
                tracing::error!(
                    "tenant {}: a second pipeline named {name} ({}) is left out; pipeline file names must differ",
                    tenant.name,
                    file.display()
                );
                continue;
            }
            let hosted = Arc::new(Hosted {
                tenant: tenant.name.clone(),
                name,
                control: Control::default(),
                state: Mutex::new(State::Starting),
            });
            pipelines.push(hosted.clone());
            let (engine, file) = (engine.clone(), file.clone());
            tasks.push(rt.spawn(host(engine, file, hosted)));
        }
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(pipelines.clone())));
    let admin = Arc::new(Admin { pipelines: pipelines.clone(), operator, tokens, registry });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!("serving {} pipeline(s); admin API and /metrics on http://{}", pipelines.len(), args.listen);
    rt.spawn(accept(listener, admin));
    // Until Ctrl-C or SIGTERM: then every pipeline finishes its checkpoint.
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    eprintln!("stopping every pipeline: finishing their checkpoints");
    for hosted in &pipelines {
        hosted.control.stop();
    }
    for task in tasks {
        let _ = rt.block_on(task);
    }
    Ok(ExitCode::SUCCESS)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        anyhow::bail!("{}: a token must be at least 16 characters", path.display());
    }
    Ok(token)
}

/// The tenant files of `path` (a directory's `*.toml`, or one file). A bad
/// file is reported and left out.
fn load_tenants(path: &Path) -> anyhow::Result<Vec<Tenant>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut tenants: Vec<Tenant> = Vec::new();
    for file in files {
        match load_tenant(&file) {
            Ok(tenant) if tenants.iter().any(|t| t.name == tenant.name) => {
                tracing::error!("tenant file {}: tenant {} is declared twice; left out", file.display(), tenant.name);
            }
            Ok(tenant) => tenants.push(tenant),
            Err(e) => tracing::error!("tenant file {}: {e:#}; left out", file.display()),
        }
    }
    Ok(tenants)
}

fn load_tenant(file: &Path) -> anyhow::Result<Tenant> {
    let text = std::fs::read_to_string(file).context("cannot read it")?;
    let parsed: TenantFile = toml::from_str(&text)?;
    let base = file.parent().unwrap_or(Path::new(""));
    let stem = file.file_stem().map_or_else(|| "tenant".into(), |s| s.to_string_lossy().into_owned());
    let name = parsed.tenant.name.unwrap_or(stem);
    sinkbox::config::check_name("tenant", &name).map_err(anyhow::Error::msg)?;
    let token = match (parsed.tenant.token, parsed.tenant.token_file) {
        (Some(token), None) if token.len() >= 16 => token,
        (Some(_), None) => anyhow::bail!("[tenant] token: must be at least 16 characters"),
        (None, Some(path)) => read_token(&base.join(path))?,
        _ => anyhow::bail!("[tenant]: give one of token and token_file"),
    };
    let pipelines = parsed.pipeline.into_iter().map(|p| base.join(p.file)).collect();
    Ok(Tenant { name, token, pipelines })
}

/// Runs one tenant's pipeline to its end, recording how it went.
async fn host(engine: Engine, file: PathBuf, hosted: Arc<Hosted>) {
    let set = |state: State| *hosted.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    // Loading compiles components and checks configs in sandboxes: off the
    // executor.
    let prepared = {
        let (engine, file) = (engine.clone(), file.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let loaded = PipelineFile::load(&file)?;
            let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
            let stem = file.file_stem().map_or_else(|| "pipeline".into(), |s| s.to_string_lossy().into_owned());
            let state = loaded.state(&base, &stem)?;
            let lock = state.lock()?;
            let pipeline = loaded.build(&engine, &base, &stem)?;
            for spec in &pipeline.sinks {
                sinkbox::schema::check_config(&engine, spec, Interrupt::never())?;
            }
            Ok((lock, pipeline))
        })
        .await
    };
    let (lock, pipeline) = match prepared {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => {
            tracing::error!(tenant = %hosted.tenant, "pipeline {}: {e:#}", file.display());
            return set(State::Failed(format!("{e:#}")));
        }
        Err(e) => return set(State::Failed(format!("its task failed: {e}"))),
    };
    set(State::Running);
    let (status, _) = pipeline.run_async(&hosted.control).await;
    drop(lock);
    if let Outcome::Failed(e) = &status.outcome {
        tracing::error!(tenant = %hosted.tenant, pipeline = %hosted.name, "{e}");
    }
    set(State::Ended(Box::new(status)));
}

async fn accept(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.handle(&req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn reply(code: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    if code == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    response
}

fn error(code: StatusCode, what: &str) -> Response<Full<Bytes>> {
    reply(code, &serde_json::json!({ "error": what }))
}

impl Admin {
    fn principal<B>(&self, req: &Request<B>) -> Option<Principal> {
        let header = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
        let token = header.strip_prefix("Bearer ")?.trim();
        if self.operator.as_deref().is_some_and(|op| constant_time_eq(op, token)) {
            return Some(Principal::Operator);
        }
        self.tokens
            .iter()
            .find(|(t, _)| constant_time_eq(t, token))
            .map(|(_, tenant)| Principal::Tenant(tenant.clone()))
    }

    fn visible(&self, who: &Principal) -> impl Iterator<Item = &Arc<Hosted>> {
        self.pipelines.iter().filter(move |p| match who {
            Principal::Operator => true,
            Principal::Tenant(t) => &p.tenant == t,
        })
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        if path == ["metrics"] && req.method() == Method::GET {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics");
            }
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            return response;
        }
        let Some(who) = self.principal(req) else {
            return error(StatusCode::UNAUTHORIZED, "give a valid bearer token");
        };
        match (req.method(), path.as_slice()) {
            (&Method::GET, ["v1", "pipelines"]) => {
                let list: Vec<serde_json::Value> = self.visible(&who).map(|p| p.json()).collect();
                reply(StatusCode::OK, &serde_json::json!({ "pipelines": list }))
            }
            (method, ["v1", "pipelines", tenant, name, rest @ ..]) => {
                let Some(hosted) = self.visible(&who).find(|p| p.tenant == *tenant && p.name == *name) else {
                    return error(StatusCode::NOT_FOUND, "no such pipeline");
                };
                match (method, rest) {
                    (&Method::GET, []) => reply(StatusCode::OK, &hosted.json()),
                    (&Method::POST, ["stop"]) => {
                        hosted.control.stop();
                        reply(StatusCode::ACCEPTED, &hosted.json())
                    }
                    _ => error(StatusCode::NOT_FOUND, "no such action"),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "no such resource"),
        }
    }
}

/// Compares tokens without stopping at the first difference.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every hosted pipeline's live counters, read at each scrape.
#[derive(Debug)]
struct Metrics(Vec<Arc<Hosted>>);

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        type Read = fn(&Hosted) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            ("sinkbox_records_read", "Records read from the source", |h| h.control.read.load(Ordering::Relaxed)),
            ("sinkbox_records_committed", "Records committed at checkpoints", |h| {
                h.control.committed.load(Ordering::Relaxed)
            }),
            ("sinkbox_input_bytes", "Input bytes read", |h| h.control.bytes.load(Ordering::Relaxed)),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for hosted in &self.0 {
                let labels = [("tenant", hosted.tenant.as_str()), ("pipeline", hosted.name.as_str())];
                ConstCounter::new(read(hosted)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_pipeline_running",
            "1 while the pipeline runs",
            None,
            MetricType::Gauge,
        )?;
        for hosted in &self.0 {
            let running = matches!(*hosted.state.lock().unwrap_or_else(|p| p.into_inner()), State::Running);
            let labels = [("tenant", hosted.tenant.as_str()), ("pipeline", hosted.name.as_str())];
            ConstGauge::new(i64::from(running)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
