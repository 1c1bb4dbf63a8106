//! `sinkbox reset`: start a pipeline over.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sinkbox::PipelineFile;
use sinkbox::state::Reset;

#[derive(clap::Args)]
pub struct ResetArgs {
    /// The pipeline file.
    pipeline: PathBuf,
}

/// Deletes the pipeline's offset store, under its lock (so never under a
/// running pipeline), and says where its dead letters are kept.
pub fn reset(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let file = PipelineFile::load(&args.pipeline)?;
    let base = args.pipeline.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = super::stem(&args.pipeline, "pipeline");
    let state = file.state(&base, &name)?;
    let _lock = state.lock()?;
    super::print(&describe(&state.reset()?))?;
    Ok(ExitCode::SUCCESS)
}

/// What a reset did, for the operator.
pub fn describe(reset: &Reset) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = match (&reset.deleted, &reset.position) {
        (false, _) => writeln!(text, "reset: no committed offsets at {}; nothing to delete", reset.offsets.display()),
        (true, Some(position)) => writeln!(
            text,
            "reset: deleted the committed offsets {} (they were at {position}); the next run starts from the beginning \
             of its input",
            reset.offsets.display()
        ),
        (true, None) => writeln!(
            text,
            "reset: deleted the offset store {} (it could not be read); the next run starts from the beginning of its \
             input",
            reset.offsets.display()
        ),
    };
    if let Some(dead) = &reset.dead_letters_kept {
        let _ = writeln!(
            text,
            "reset: dead letters kept in {} (delete it yourself if you no longer need them)",
            dead.display()
        );
    }
    text
}
