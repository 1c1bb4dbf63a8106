//! `sinkbox check`: the compliance scenarios against any sink component.

use std::path::PathBuf;
use std::process::ExitCode;

use sinkbox::Engine;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A component file, or `builtin:NAME`.
    component: String,
    /// The sink's JSON config; `{out}` stands for a file in a scratch
    /// directory the sink is granted as `/out`.
    #[arg(long, default_value = r#"{"path":"{out}"}"#)]
    config: String,
}

pub fn check(engine: &Engine, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let component = sinkbox::config::load_component(engine, &args.component, &PathBuf::from("."))?;
    let scratch = std::env::temp_dir().join(format!("sinkbox-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let subject =
        sinkbox::check::Subject { component: &component, config: &args.config, output: None, scratch: &scratch };
    let outcomes = sinkbox::runtime()?.block_on(sinkbox::check::check(engine, &subject));
    let _ = std::fs::remove_dir_all(&scratch);
    let outcomes = outcomes?;
    println!("{:<50} result", "scenario");
    for outcome in &outcomes {
        match &outcome.problem {
            None => println!("{:<50} pass", outcome.scenario),
            Some(problem) => println!("{:<50} FAIL: {}", outcome.scenario, problem.replace('\n', "\n    ")),
        }
    }
    let failed = outcomes.iter().filter(|o| o.problem.is_some()).count();
    println!("{} of {} scenarios passed", outcomes.len() - failed, outcomes.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
