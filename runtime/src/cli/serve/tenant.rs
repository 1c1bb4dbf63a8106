//! Tenant files: who a tenant is (name, token), what its sinks may be
//! granted, the ceilings of their limits, and its quotas. A tenant's
//! pipelines are checked against them before they start: a pipeline that
//! asks for more is refused with a message naming the sink, the setting
//! and the tenant file.
//!
//! ```toml
//! [tenant]
//! name = "acme"              # default: the file's stem
//! token_file = "acme.token"  # or token = "..." (16 characters or more)
//!
//! [limits]                   # ceilings for each of its sink instances
//! memory = "64MiB"
//! memory_total = "512MiB"    # all its instances together
//! timeout = "10s"            # wall clock of one call
//! fuel_per_call = 1000000000
//! fuel_per_record = 10000000
//!
//! [grants]                   # what its sinks may be granted (default: nothing)
//! dirs = ["acme-data"]       # relative to the tenant file; subdirectories too
//! hosts = ["http://127.0.0.1:9200", "https://*.acme.example:443"]
//!
//! [quotas]
//! instances = 32             # sink instances over all its pipelines
//! records_per_second = 50000 # shared by all its pipelines
//! disk = "1GiB"              # per sink with a writable directory
//! dead_letters = 10000       # per pipeline
//!
//! [[pipeline]]
//! file = "acme/orders.toml"  # relative to the tenant file
//! ```

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sinkbox::config::{HumanBytes, HumanDuration, SinkSection};
use sinkbox::{HostGrant, PipelineFile, RateLimit, SandboxLimits};

/// A tenant file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    tenant: TenantSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    grants: AllowedGrants,
    #[serde(default)]
    quotas: Quotas,
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

/// Ceilings for every sink instance of the tenant.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "bytes")]
    pub memory: Option<HumanBytes>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "bytes")]
    pub memory_total: Option<HumanBytes>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "secs")]
    pub timeout: Option<HumanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_per_call: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_per_record: Option<u64>,
}

/// What the tenant's sinks may be granted.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedGrants {
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The tenant's quotas.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "bytes")]
    pub disk: Option<HumanBytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
}

fn bytes<S: serde::Serializer>(b: &Option<HumanBytes>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(b.map_or(0, |b| b.0))
}

fn secs<S: serde::Serializer>(d: &Option<HumanDuration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.0.as_secs_f64()))
}

/// A tenant, as loaded.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub token: String,
    /// The tenant file.
    pub file: PathBuf,
    pub limits: Limits,
    pub grants: AllowedGrants,
    /// `grants.hosts`, parsed.
    hosts: Vec<HostGrant>,
    /// `grants.dirs`, absolute and normalised.
    dirs: Vec<PathBuf>,
    pub quotas: Quotas,
    pub pipelines: Vec<PathBuf>,
    /// Shared by all its pipelines, if it has a records-per-second quota.
    pub rate: Option<Arc<RateLimit>>,
    /// Sink instances and memory its running pipelines hold (shared with
    /// the tenant's earlier and later versions of its file).
    pub instances: Arc<AtomicU64>,
    pub memory: Arc<AtomicU64>,
}

/// What one pipeline holds of its tenant's quotas while it runs; given
/// back when dropped.
pub struct Reservation {
    tenant: Arc<Tenant>,
    instances: u64,
    memory: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.tenant.instances.fetch_sub(self.instances, Ordering::SeqCst);
        self.tenant.memory.fetch_sub(self.memory, Ordering::SeqCst);
    }
}

pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        anyhow::bail!("{}: a token must be at least 16 characters", path.display());
    }
    Ok(token)
}

/// The tenant files of `path`: a directory's `*.toml`, sorted, or one file.
pub fn tenant_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads a tenant file; the error names what is wrong (the caller names
/// the file).
pub fn load(file: &Path) -> anyhow::Result<Tenant> {
    let text = std::fs::read_to_string(file).context("cannot read it")?;
    let parsed: TenantFile = toml::from_str(&text)?;
    let base = absolute(file.parent().unwrap_or(Path::new("")));
    let stem = super::super::stem(file, "tenant");
    let name = parsed.tenant.name.unwrap_or(stem);
    sinkbox::config::check_name("tenant", &name).map_err(anyhow::Error::msg)?;
    let token = match (parsed.tenant.token, parsed.tenant.token_file) {
        (Some(token), None) if token.len() >= 16 => token,
        (Some(_), None) => anyhow::bail!("[tenant] token: must be at least 16 characters"),
        (None, Some(path)) => read_token(&base.join(path))?,
        _ => anyhow::bail!("[tenant]: give one of token and token_file"),
    };
    let hosts = parsed
        .grants
        .hosts
        .iter()
        .map(|h| HostGrant::parse(h).map_err(|e| anyhow::anyhow!("[grants] hosts: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let dirs = parsed.grants.dirs.iter().map(|d| normalise(&base.join(d))).collect();
    let pipelines = parsed.pipeline.into_iter().map(|p| base.join(p.file)).collect();
    let rate = parsed.quotas.records_per_second.map(|n| Arc::new(RateLimit::new(n)));
    Ok(Tenant {
        name,
        token,
        file: file.to_path_buf(),
        limits: parsed.limits,
        grants: parsed.grants,
        hosts,
        dirs,
        quotas: parsed.quotas,
        pipelines,
        rate,
        instances: Arc::default(),
        memory: Arc::default(),
    })
}

impl Tenant {
    /// What its pipelines are fitted to: limits, grants and quotas.
    pub fn policy(&self) -> serde_json::Value {
        serde_json::json!({ "limits": self.limits, "grants": self.grants, "quotas": self.quotas })
    }

    /// Takes over what `old` (an earlier version of this tenant's file)
    /// counts: the quotas its running pipelines hold, and its rate limit
    /// if the rate did not change.
    pub fn inherit(&mut self, old: &Tenant) {
        self.instances = old.instances.clone();
        self.memory = old.memory.clone();
        if self.quotas.records_per_second == old.quotas.records_per_second {
            self.rate = old.rate.clone();
        }
    }

    /// Fits `pipeline` (from a file in `base`) to this tenant: refuses
    /// grants and limits beyond the tenant's, and sets the tenant's
    /// ceilings where the pipeline leaves a limit at its default.
    pub fn fit(&self, pipeline: &mut PipelineFile, base: &Path) -> anyhow::Result<()> {
        let file = self.file.display();
        let defaults = SandboxLimits::default();
        if let Some(max) = self.quotas.dead_letters {
            match pipeline.pipeline.max_dead_letters {
                Some(n) if n > max => anyhow::bail!(
                    "[pipeline] max_dead_letters = {n} is above tenant {}'s quota of {max} ({file})",
                    self.name
                ),
                _ => pipeline.pipeline.max_dead_letters = Some(pipeline.pipeline.max_dead_letters.unwrap_or(max)),
            }
        }
        for sink in &mut pipeline.sinks {
            let name = sink.name.clone();
            let over = |what: &str, asked: String, ceiling: String| {
                anyhow::anyhow!(
                    "sink \"{name}\": limits.{what} = {asked} is above tenant {}'s ceiling of {ceiling} ({file})",
                    self.name
                )
            };
            let l = &mut sink.limits;
            if let Some(max) = self.limits.memory {
                fit(&mut l.memory, max, HumanBytes(defaults.memory_cap()), |b| b.0)
                    .map_err(|asked| over("memory", bytes_text(asked.0), bytes_text(max.0)))?;
            }
            if let Some(max) = self.limits.timeout {
                fit(&mut l.timeout, max, HumanDuration(defaults.timeout_cap()), |d| d.0)
                    .map_err(|asked| over("timeout", format!("{:?}", asked.0), format!("{:?}", max.0)))?;
            }
            if let Some(max) = self.limits.fuel_per_call {
                fit(&mut l.fuel_per_call, max, defaults.fuel_per_call_cap(), |f| f)
                    .map_err(|asked| over("fuel_per_call", asked.to_string(), max.to_string()))?;
            }
            if let Some(max) = self.limits.fuel_per_record {
                fit(&mut l.fuel_per_record, max, defaults.fuel_per_record_cap(), |f| f)
                    .map_err(|asked| over("fuel_per_record", asked.to_string(), max.to_string()))?;
            }
            let writable = sink.grants.dirs.iter().any(|d| d.mode == sinkbox::config::DirMode::Rw);
            if let Some(max) = self.quotas.disk.filter(|_| writable) {
                match l.disk {
                    Some(asked) if asked.0 > max.0 => {
                        return Err(over("disk", bytes_text(asked.0), bytes_text(max.0)));
                    }
                    Some(_) => {}
                    None => l.disk = Some(max),
                }
            }
            self.check_grants(sink, base)?;
        }
        Ok(())
    }

    fn check_grants(&self, sink: &SinkSection, base: &Path) -> anyhow::Result<()> {
        let (name, file) = (&sink.name, self.file.display());
        for dir in &sink.grants.dirs {
            let host = normalise(&absolute(&base.join(&dir.host)));
            // A symbolic link must not lead out of an allowed directory.
            let real = std::fs::canonicalize(&host).unwrap_or_else(|_| host.clone());
            let allowed = |d: &PathBuf| {
                let d_real = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
                host.starts_with(d) && real.starts_with(&d_real)
            };
            if !self.dirs.iter().any(allowed) {
                anyhow::bail!(
                    "sink \"{name}\": grants.dirs: {} is not under a directory tenant {} may grant; add it to \
                     [grants] dirs in {file}",
                    host.display(),
                    self.name
                );
            }
        }
        for text in &sink.grants.hosts {
            let Ok(grant) = HostGrant::parse(text) else { continue }; // the pipeline's own check names it
            if !self.hosts.iter().any(|allowed| covers(allowed, &grant)) {
                anyhow::bail!(
                    "sink \"{name}\": grants.hosts: {text} is not a host tenant {} may grant; add it to [grants] \
                     hosts in {file}",
                    self.name
                );
            }
        }
        Ok(())
    }

    /// Takes `instances` sink instances of `memory` bytes each from the
    /// tenant's quotas, or says which quota they would exceed.
    pub fn reserve(self: &Arc<Self>, instances: u64, memory: u64) -> anyhow::Result<Reservation> {
        let file = self.file.display();
        let held = self.instances.fetch_add(instances, Ordering::SeqCst) + instances;
        let total = self.memory.fetch_add(memory, Ordering::SeqCst) + memory;
        let reservation = Reservation { tenant: self.clone(), instances, memory };
        if let Some(max) = self.quotas.instances.filter(|max| held > *max) {
            anyhow::bail!(
                "tenant {}'s pipelines would hold {held} sink instances, over its quota of {max} ({file})",
                self.name
            );
        }
        if let Some(max) = self.limits.memory_total.filter(|max| total > max.0) {
            anyhow::bail!(
                "tenant {}'s sink instances would be allowed {} of memory together, over its limit of {} ({file})",
                self.name,
                bytes_text(total),
                bytes_text(max.0)
            );
        }
        Ok(reservation)
    }
}

/// Puts the ceiling `max` into an unset limit whose default is above it;
/// an asked value above it is the error.
fn fit<T: Copy, K: PartialOrd>(slot: &mut Option<T>, max: T, default: T, key: impl Fn(T) -> K) -> Result<(), T> {
    match *slot {
        Some(asked) if key(asked) > key(max) => Err(asked),
        Some(_) => Ok(()),
        None => {
            if key(default) > key(max) {
                *slot = Some(max);
            }
            Ok(())
        }
    }
}

/// Whether the tenant's `allowed` grant covers the sink's `asked`.
fn covers(allowed: &HostGrant, asked: &HostGrant) -> bool {
    use sinkbox::HostPattern::{Name, Suffix};
    if allowed.protocol != asked.protocol || allowed.port != asked.port {
        return false;
    }
    match (&allowed.host, &asked.host) {
        (Suffix(suffix), Name(name) | Suffix(name)) => name.ends_with(suffix.as_str()),
        (a, b) => a == b,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` with `.` and `..` taken out lexically.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn bytes_text(n: u64) -> String {
    sinkbox::error::Bytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(extra: &str) -> (tempdir::Dir, Tenant) {
        let dir = tempdir::Dir::new();
        let file = dir.0.join("acme.toml");
        std::fs::write(&file, format!("[tenant]\ntoken = \"0123456789abcdef\"\n{extra}")).unwrap();
        let t = load(&file).unwrap();
        (dir, t)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                let path = std::env::temp_dir().join(format!("sinkbox-tenant-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn pipeline(sink: &str) -> PipelineFile {
        let text =
            format!("[source]\nkind = \"stdin\"\n[[sink]]\nname = \"out\"\ncomponent = \"builtin:blackhole\"\n{sink}");
        PipelineFile::parse(&text, "p.toml").unwrap()
    }

    #[test]
    fn limits_above_the_ceiling_are_refused_and_unset_ones_get_it() {
        let (dir, t) = tenant("[limits]\nmemory = \"32MiB\"\ntimeout = \"2s\"\n");
        let mut p = pipeline("limits = { memory = \"128MiB\" }\n");
        let e = t.fit(&mut p, &dir.0).unwrap_err().to_string();
        assert!(e.contains("sink \"out\": limits.memory = 128 MiB is above tenant acme's ceiling of 32 MiB"), "{e}");
        let mut p = pipeline("");
        t.fit(&mut p, &dir.0).unwrap();
        assert_eq!(p.sinks[0].limits.memory, Some(HumanBytes(32 << 20)));
        assert_eq!(p.sinks[0].limits.timeout.map(|d| d.0), Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn grants_must_be_within_the_tenants() {
        let (dir, t) =
            tenant("[grants]\ndirs = [\"data\"]\nhosts = [\"http://127.0.0.1:9200\", \"https://*.acme.example\"]\n");
        let ok = "grants = { dirs = [{ host = \"data/out\", guest = \"/out\", mode = \"rw\" }], hosts = \
                  [\"http://127.0.0.1:9200\", \"https://api.acme.example\"] }\n";
        t.fit(&mut pipeline(ok), &dir.0).unwrap();
        let escape = "grants = { dirs = [{ host = \"data/../other\", guest = \"/out\" }] }\n";
        let e = t.fit(&mut pipeline(escape), &dir.0).unwrap_err().to_string();
        assert!(e.contains("is not under a directory tenant acme may grant"), "{e}");
        let host = "grants = { hosts = [\"http://127.0.0.1:9201\"] }\n";
        let e = t.fit(&mut pipeline(host), &dir.0).unwrap_err().to_string();
        assert!(e.contains("http://127.0.0.1:9201 is not a host tenant acme may grant"), "{e}");
    }

    #[test]
    fn quotas_of_instances_and_memory_are_held_and_given_back() {
        let (_dir, t) = tenant("[limits]\nmemory_total = \"100MiB\"\n[quotas]\ninstances = 3\n");
        let t = Arc::new(t);
        let a = t.reserve(2, 64 << 20).unwrap();
        let e = t.reserve(1, 64 << 20).err().unwrap().to_string();
        assert!(e.contains("over its limit of 100 MiB"), "{e}");
        let e = t.reserve(2, 1).err().unwrap().to_string();
        assert!(e.contains("4 sink instances, over its quota of 3"), "{e}");
        drop(a);
        assert_eq!(t.instances.load(Ordering::SeqCst), 0);
        t.reserve(3, 90 << 20).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempdir::Dir::new();
        let file = dir.0.join("t.toml");
        std::fs::write(&file, "[tenant]\ntoken = \"0123456789abcdef\"\n[quotas]\nrecords_per_sec = 5\n").unwrap();
        let e = load(&file).err().unwrap().to_string();
        assert!(e.contains("records_per_sec"), "{e}");
    }
}
