//! `sinkbox validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sinkbox::checkpoint::SinkSpec;
use sinkbox::config::SourceSection;
use sinkbox::{DirGrant, Engine, Grants, Interrupt, PipelineFile, SinkInstance};

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    pipeline: PathBuf,
}

/// Checks what `run` checks before it reads a record: the file's structure
/// and names, that the source exists and that the committed offsets are
/// for it, that every component loads and implements the sink world, every
/// sink's config against its schema, and that every sink opens with its
/// config (in a dry run: its writable directories are replaced by empty
/// scratch copies of their directory tree, so nothing real is written).
pub fn validate(engine: &Engine, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let file = PipelineFile::load(&args.pipeline)?;
    let base = args.pipeline.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = super::stem(&args.pipeline, "pipeline");
    let state = file.state(&base, &name)?;
    if let SourceSection::File { path, .. } = &file.source {
        let path = base.join(path);
        if !path.is_file() {
            anyhow::bail!("{}: source file {} does not exist", args.pipeline.display(), path.display());
        }
    }
    // Reads no input: it only opens the source and checks the committed
    // offsets are for it. A Kafka source's settings are checked without
    // joining its group (joining would make the group rebalance).
    match &file.source {
        #[cfg(feature = "kafka")]
        SourceSection::Kafka(section) => sinkbox::source::KafkaSource::check(section)?,
        _ => drop(file.open_source(&base, &state)?),
    }
    let mut failed = 0;
    for section in &file.sinks {
        let checked = section.resolve(engine, &base).and_then(|spec| {
            let schema = sinkbox::schema::check_config(engine, &spec, Interrupt::never())?;
            dry_open(engine, &spec)?;
            Ok(schema)
        });
        match checked {
            Ok(Some(_)) => {
                say!("ok    sink \"{}\": config matches its schema and the sink opens with it", section.name)
            }
            Ok(None) => say!("ok    sink \"{}\": opens (it publishes no config schema)", section.name),
            Err(e) => {
                failed += 1;
                let chain = sinkbox::error::chain(&e);
                // Most errors name the sink already; say it once.
                if chain.starts_with(&format!("sink \"{}\"", section.name)) {
                    say!("FAIL  {chain}");
                } else {
                    say!("FAIL  sink \"{}\": {chain}", section.name);
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{}: {failed} of {} sinks are invalid", args.pipeline.display(), file.sinks.len());
    }
    say!("{} is valid", args.pipeline.display());
    Ok(ExitCode::SUCCESS)
}

/// Opens (and closes) the sink as `run` would, but with each writable
/// directory replaced by an empty copy of its directory tree, so `open`
/// sees its config and the directories it expects and writes nothing real.
fn dry_open(engine: &Engine, spec: &SinkSpec) -> sinkbox::Result<()> {
    let scratch = std::env::temp_dir().join(format!("sinkbox-validate-{}-{}", std::process::id(), spec.name));
    let result = (|| {
        let mut dirs = Vec::new();
        for (i, grant) in spec.grants.dirs.iter().enumerate() {
            if !grant.writable {
                dirs.push(grant.clone());
                continue;
            }
            let copy = scratch.join(i.to_string());
            copy_tree(&grant.host, &copy, &mut 1_000).map_err(|e| sinkbox::Error::Io {
                what: format!("cannot make a scratch copy of {}", grant.host.display()),
                source: e,
            })?;
            dirs.push(DirGrant { host: copy, ..grant.clone() });
        }
        let grants = Grants { dirs, quota: None, ..spec.grants.clone() };
        let context = sinkbox::Context {
            pipeline: "validate".into(),
            sink: spec.name.clone(),
            topic: String::new(),
            partition: 0,
            lane: 0,
            lanes: spec.lanes.max(1),
            worker_index: 0,
            worker_count: spec.lanes.max(1),
            snapshot: None,
            probe: false,
        };
        sinkbox::runtime()?.block_on(async {
            let mut instance =
                SinkInstance::new(engine, &spec.component, &spec.name, spec.limits, &grants, Interrupt::never())
                    .await?;
            instance
                .open(&spec.config, &context)
                .await
                .map_err(|e| sinkbox::Error::from(e.into_failure(&spec.name, sinkbox::Phase::Open)))?;
            if let (Err(e), _) = instance.close().await {
                tracing::warn!("{}", e.into_failure(&spec.name, sinkbox::Phase::Close));
            }
            Ok(())
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Creates `to` with the directories (not the files) under `from`, at most
/// `budget` of them; symbolic links are not followed.
fn copy_tree(from: &Path, to: &Path, budget: &mut u32) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let Ok(entries) = std::fs::read_dir(from) else { return Ok(()) };
    for entry in entries.flatten() {
        if *budget == 0 {
            break;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            *budget -= 1;
            copy_tree(&entry.path(), &to.join(entry.file_name()), budget)?;
        }
    }
    Ok(())
}
