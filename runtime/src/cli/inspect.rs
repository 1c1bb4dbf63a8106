//! `sinkbox inspect`.

use std::path::Path;
use std::process::ExitCode;

use sinkbox::{Engine, Grants, Interrupt, SandboxLimits, SinkInstance};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A component file, or `builtin:NAME`.
    component: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn inspect(engine: &Engine, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let bytes: Vec<u8> = match args.component.strip_prefix("builtin:") {
        Some(name) => sinkbox::builtins::get(name)
            .ok_or_else(|| {
                anyhow::anyhow!("no built-in sink \"{name}\"; built-ins are: {}", sinkbox::builtins::names().join(", "))
            })?
            .to_vec(),
        None => std::fs::read(Path::new(&args.component))
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.component))?,
    };
    let info = engine.inspect(&bytes, &args.component)?;
    let version = info.exports.iter().find_map(|e| e.strip_prefix("sinkbox:sink/sink@")).map(str::to_string);
    let (is_sink, problem, schema) = match &info.sink {
        Ok(component) => {
            // The sink's own calls and the checks of its schema run under
            // the default limits, as `validate` would run them.
            let limits = SandboxLimits::default();
            let schema = sinkbox::runtime()?.block_on(async {
                let mut instance =
                    SinkInstance::new(engine, component, "inspect", limits, &Grants::default(), Interrupt::never())
                        .await
                        .map_err(|e| e.to_string())?;
                instance
                    .config_schema()
                    .await
                    .map_err(|e| e.into_failure("inspect", sinkbox::Phase::ConfigSchema).to_string())
            });
            match schema {
                Ok(Some(schema)) => {
                    match sinkbox::schema::check_schema(engine, "inspect", limits, &schema, None, Interrupt::never()) {
                        Ok(()) => (true, None, Some(schema)),
                        // A refused schema within the size limit is still
                        // shown, so its author can see what was refused.
                        Err(e) => {
                            let shown = (schema.len() <= sinkbox::schema::MAX_SCHEMA_BYTES).then_some(schema);
                            (true, Some(sinkbox_error_chain(&e)), shown)
                        }
                    }
                }
                Ok(None) => (true, None, None),
                Err(e) => (true, Some(e), None),
            }
        }
        Err(e) => (false, Some(sinkbox_error_chain(e)), None),
    };
    if args.json {
        let value = serde_json::json!({
            "component": args.component,
            "bytes": bytes.len(),
            "implements_sink_world": is_sink,
            "sink_version": version,
            "problem": problem,
            "imports": info.imports,
            "exports": info.exports,
            "config_schema": schema.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose().ok().flatten(),
        });
        say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        say!("component   {} ({} bytes)", args.component, bytes.len());
        say!("sink world  {}", if is_sink { "yes (sinkbox:sink/sink-world)" } else { "no" });
        say!("version     {}", version.as_deref().unwrap_or("-"));
        if let Some(problem) = &problem {
            say!("problem     {problem}");
        }
        say!("imports");
        for import in &info.imports {
            say!("  {import}");
        }
        say!("exports");
        for export in &info.exports {
            say!("  {export}");
        }
        match &schema {
            Some(schema) => say!("config schema\n{}", pretty(schema)),
            None => say!("config schema  none"),
        }
    }
    Ok(if is_sink && problem.is_none() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_string())
}

fn sinkbox_error_chain(e: &sinkbox::Error) -> String {
    sinkbox::error::chain(e)
}
