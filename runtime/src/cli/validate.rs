//! `sinkbox validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sinkbox::config::SourceSection;
use sinkbox::{Engine, PipelineFile};

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    pipeline: PathBuf,
}

/// Checks the file's structure, that the source exists, that every
/// component loads and implements the sink world, and every sink's config
/// against its schema. Runs no record through anything.
pub fn validate(engine: &Engine, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let file = PipelineFile::load(&args.pipeline)?;
    let base = args.pipeline.parent().map(Path::to_path_buf).unwrap_or_default();
    if let SourceSection::File { path, .. } = &file.source {
        let path = base.join(path);
        if !path.is_file() {
            anyhow::bail!("{}: source file {} does not exist", args.pipeline.display(), path.display());
        }
    }
    let mut failed = 0;
    for section in &file.sinks {
        let checked = section.resolve(engine, &base).and_then(|spec| sinkbox::schema::check_config(engine, &spec));
        match checked {
            Ok(Some(_)) => println!("ok    sink \"{}\": config matches its schema", section.name),
            Ok(None) => println!("ok    sink \"{}\": loads (it publishes no config schema)", section.name),
            Err(e) => {
                failed += 1;
                println!("FAIL  sink \"{}\": {}", section.name, sinkbox::error::chain(&e));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{}: {failed} of {} sinks are invalid", args.pipeline.display(), file.sinks.len());
    }
    println!("{} is valid", args.pipeline.display());
    Ok(ExitCode::SUCCESS)
}
