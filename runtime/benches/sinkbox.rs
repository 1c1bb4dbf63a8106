//! Sinkbox's benchmarks: one table, written to BENCHMARKS.md.
//!
//! `cargo bench -p sinkbox --bench sinkbox [-- SECTION...]` where SECTION is
//! any of `boundary realistic limits instantiate coldstart e2e languages`
//! (default: all). Every comparison runs both sides in this one process, interleaved
//! sample by sample, and reports medians and their ratio; this machine is
//! noisy, so ratios measured side by side are what to read.
//!
//! Environment: `SINKBOX_BENCH_E2E_MB` sets the end-to-end input size
//! (default 1024), `SINKBOX_BENCH_SAMPLES` the samples per measurement
//! (default 11).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sinkbox::status::current_rss;
use sinkbox::{Batch, Engine, EngineOptions, Grants, Interrupt, Pooling, SandboxLimits, SinkComponent, SinkInstance};
use sinkbox_format::{BatchWriter, RecordRef};
use sinkbox_sdk::Sink;

/// A sink called natively through a trait object, as a native host would.
trait NativeSink {
    fn add(&mut self, batch: sinkbox_sdk::Batch);
    fn abort(&mut self);
}

impl<S: Sink> NativeSink for S {
    fn add(&mut self, batch: sinkbox_sdk::Batch) {
        // Benchmarks feed only records the sinks accept.
        let _ = self.add_batch(batch);
    }
    fn abort(&mut self) {
        Sink::abort(self);
    }
}

struct Report {
    markdown: String,
}

impl Report {
    fn section(&mut self, title: &str, header: &[&str]) {
        println!("\n## {title}\n");
        let _ = writeln!(self.markdown, "\n## {title}\n");
        self.row(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        self.row(&header.iter().map(|_| "---".to_string()).collect::<Vec<_>>());
    }

    fn row(&mut self, cells: &[String]) {
        let line = format!("| {} |", cells.join(" | "));
        println!("{line}");
        let _ = writeln!(self.markdown, "{line}");
    }

    fn note(&mut self, text: &str) {
        println!("\n{text}");
        let _ = writeln!(self.markdown, "\n{text}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn samples() -> usize {
    std::env::var("SINKBOX_BENCH_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(11)
}

/// Runs `sides` interleaved, `samples()` times each, and returns the median
/// of each side's ns per record.
fn interleaved(records_per_sample: u64, sides: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut results = vec![Vec::new(); sides.len()];
    for side in sides.iter_mut() {
        side(); // warm up
    }
    for _ in 0..samples() {
        for (i, side) in sides.iter_mut().enumerate() {
            let started = Instant::now();
            side();
            results[i].push(started.elapsed().as_nanos() as f64 / records_per_sample as f64);
        }
    }
    results.into_iter().map(median).collect()
}

/// `count` records with 16-byte keys, one header, and values from `value`.
fn encode(count: usize, value: impl Fn(usize) -> Vec<u8>) -> (Vec<u8>, u32) {
    let mut w = BatchWriter::default();
    for i in 0..count {
        let key = format!("key-{i:012}");
        let v = value(i);
        w.push(&RecordRef {
            offset: i as u64,
            timestamp: Some(1_700_000_000_000 + i as i64),
            key: Some(key.as_bytes()),
            value: &v,
            headers: &[(b"source", b"bench")],
        });
    }
    w.finish()
}

fn blob_value(_: usize) -> Vec<u8> {
    vec![b'x'; 100]
}

fn order_value(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":{i},"customer":"customer-{:04}","items":{},"total":{}.{:02},"note":"gift, wrapped"}}"#,
        i % 9973,
        i % 9 + 1,
        i % 500,
        i % 100
    )
    .into_bytes()
}

struct Ctx {
    engine: Engine,
    blackhole: SinkComponent,
    file: SinkComponent,
    scratch: PathBuf,
    grants: Grants,
}

/// The process's runtime, on which every guest call is awaited.
fn rt() -> &'static tokio::runtime::Runtime {
    sinkbox::runtime().expect("the async runtime starts")
}

/// The context of a first open, as the runtime gives it.
fn context() -> sinkbox::Context {
    sinkbox::check::context(None, false)
}

/// The same context for a sink's native build.
fn native_context() -> sinkbox_sdk::Context {
    sinkbox_sdk::testing::context("bench", 0)
}

/// A new, unopened instance.
fn new_instance(engine: &Engine, component: &SinkComponent, grants: &Grants) -> SinkInstance {
    rt().block_on(SinkInstance::new(engine, component, "bench", SandboxLimits::default(), grants, Interrupt::never()))
        .expect("instantiate")
}

fn open(instance: &mut SinkInstance, config: &str) {
    rt().block_on(instance.open(config, &context()))
        .map_err(|e| e.into_failure("bench", sinkbox::Phase::Open))
        .expect("open");
}

fn instance(engine: &Engine, component: &SinkComponent, grants: &Grants, config: &str) -> SinkInstance {
    let mut instance = new_instance(engine, component, grants);
    open(&mut instance, config);
    instance
}

const CSV_CONFIG_COLUMNS: &str = r#"["id","customer","items","total","note"]"#;

fn csv_config(path: &str) -> String {
    format!(r#"{{"path":"{path}","format":"csv","columns":{CSV_CONFIG_COLUMNS},"spill_bytes":1073741824}}"#)
}

fn boundary(ctx: &Ctx, report: &mut Report) {
    report.section(
        "1. Boundary cost: blackhole sink, 100-byte values, 16-byte keys, one header",
        &["batch", "wasm ns/record", "native ns/record", "ratio", "host encode ns/record"],
    );
    for batch_size in [1usize, 100, 1000, 10_000] {
        let (data, count) = encode(batch_size, blob_value);
        let total: u64 = if batch_size == 1 { 100_000 } else { 1_000_000 };
        let calls = total / batch_size as u64;
        let batch = Batch { topic: "bench".into(), partition: 0, count, data: data.clone() };
        let mut wasm = instance(&ctx.engine, &ctx.blackhole, &ctx.grants, "{}");
        let mut native =
            sinkbox_sink_blackhole::Blackhole::open(Default::default(), &native_context()).expect("native open");
        let mut wasm_side = wasm_adds(&mut wasm, &batch, calls, false);
        let mut native_side = native_adds(&mut native, &batch, calls, false);
        let mut encode_side = || {
            for _ in 0..calls {
                black_box(encode_again(&data, count));
            }
        };
        let r = interleaved(total, &mut [&mut wasm_side, &mut native_side, &mut encode_side]);
        report.row(&[
            batch_size.to_string(),
            format!("{:.1}", r[0]),
            format!("{:.1}", r[1]),
            format!("{:.2}x", r[0] / r[1]),
            format!("{:.1}", r[2]),
        ]);
    }
    report.note(
        "wasm: `add` through the sandbox with the default limits (epoch deadline on, fuel off; section 3 prices \
         fuel), the batch copied into guest memory and decoded in place by the SDK. native: the same crate compiled for the host, called through \
         `Box<dyn Sink>` with an owned copy of the batch. host encode: re-encoding the batch from decoded records \
         on the host (what the source thread does once per batch).",
    );
}

/// `calls` adds of `batch` to a sandboxed sink; `abort_each` clears the
/// sink after every batch (so an encoding sink never does I/O), otherwise
/// once at the end.
fn wasm_adds<'a>(sink: &'a mut SinkInstance, batch: &'a Batch, calls: u64, abort_each: bool) -> impl FnMut() + 'a {
    move || {
        rt().block_on(async {
            for _ in 0..calls {
                sink.add(black_box(batch)).await.expect("add");
                if abort_each {
                    sink.abort().await.expect("abort");
                }
            }
            sink.abort().await.expect("abort");
        })
    }
}

/// The same as [`wasm_adds`] for the sink's native build, called through a
/// trait object with an owned copy of the batch (the copy stands for the
/// sandbox's copy into guest memory).
fn native_adds<'a>(sink: &'a mut dyn NativeSink, batch: &'a Batch, calls: u64, abort_each: bool) -> impl FnMut() + 'a {
    move || {
        for _ in 0..calls {
            sink.add(black_box(sinkbox_sdk::Batch::new("bench".into(), 0, batch.count, batch.data.clone())));
            if abort_each {
                sink.abort();
            }
        }
        sink.abort();
    }
}

/// Decodes and re-encodes a batch: the host-side encoding cost per record.
fn encode_again(data: &[u8], count: u32) -> (Vec<u8>, u32) {
    let mut w = BatchWriter::with_capacity(data.len());
    for r in sinkbox_format::Records::new(data, count).flatten() {
        w.begin(r.offset, r.timestamp, r.key, r.value, r.header_count());
        for (n, v) in r.headers().flatten() {
            w.header(n, v);
        }
    }
    w.finish()
}

fn realistic(ctx: &Ctx, report: &mut Report) {
    report.section(
        "2. Realistic sink: parse each JSON value, write a CSV line (the file sink's encoder), batch 1000",
        &["wasm ns/record", "native ns/record", "ratio"],
    );
    let (data, count) = encode(1000, order_value);
    let batch = Batch { topic: "bench".into(), partition: 0, count, data };
    let mut wasm = instance(&ctx.engine, &ctx.file, &ctx.grants, &csv_config("/out/wasm.csv"));
    let native_path = ctx.scratch.join("native.csv");
    let config: sinkbox_sink_file::Config =
        serde_json::from_str(&csv_config(&native_path.display().to_string())).expect("config");
    let mut native = sinkbox_sink_file::FileSink::open(config, &native_context()).expect("native open");
    let calls = 300;
    let mut wasm_side = wasm_adds(&mut wasm, &batch, calls, true);
    let mut native_side = native_adds(&mut native, &batch, calls, true);
    let r = interleaved(calls * 1000, &mut [&mut wasm_side, &mut native_side]);
    report.row(&[format!("{:.1}", r[0]), format!("{:.1}", r[1]), format!("{:.2}x", r[0] / r[1])]);
    report.note(
        "Each value is a ~110-byte JSON order object; `abort` after each batch clears the line buffer so no file \
         I/O is measured.",
    );
}

fn limits(ctx: &Ctx, report: &mut Report) {
    report.section(
        "3. The cost of each limit (batch 1000), against neither fuel nor epochs",
        &["configuration", "blackhole ns/record", "overhead", "CSV ns/record", "overhead"],
    );
    let configs =
        [("neither", false, false), ("fuel", true, false), ("epochs", false, true), ("fuel + epochs", true, true)];
    let (blob, blob_count) = encode(1000, blob_value);
    let (orders, orders_count) = encode(1000, order_value);
    let blob_batch = Batch { topic: "bench".into(), partition: 0, count: blob_count, data: blob };
    let orders_batch = Batch { topic: "bench".into(), partition: 0, count: orders_count, data: orders };
    let mut setups: Vec<(Engine, SinkInstance, SinkInstance)> = configs
        .iter()
        .map(|&(_, fuel, epochs)| {
            let engine = Engine::new(
                EngineOptions::default()
                    .fuel(fuel)
                    .epochs(epochs)
                    .pooling(Some(Pooling { instances: 16, ..Pooling::default() }))
                    .cache_dir(Some(ctx.scratch.join("cache"))),
            )
            .expect("engine");
            let blackhole =
                engine.load(sinkbox::builtins::get("blackhole").expect("builtin"), "blackhole").expect("load");
            let file = engine.load(sinkbox::builtins::get("file").expect("builtin"), "file").expect("load");
            let b = instance(&engine, &blackhole, &ctx.grants, "{}");
            let f = instance(&engine, &file, &ctx.grants, &csv_config("/out/limits.csv"));
            (engine, b, f)
        })
        .collect();
    let blackhole_results = {
        let mut sides: Vec<Box<dyn FnMut() + '_>> = setups
            .iter_mut()
            .map(|(_, b, _)| Box::new(wasm_adds(b, &blob_batch, 1000, false)) as Box<dyn FnMut()>)
            .collect();
        let mut refs: Vec<&mut dyn FnMut()> = sides.iter_mut().map(|s| s.as_mut() as &mut dyn FnMut()).collect();
        interleaved(1_000_000, &mut refs)
    };
    let csv_results = {
        let mut sides: Vec<Box<dyn FnMut() + '_>> = setups
            .iter_mut()
            .map(|(_, _, f)| Box::new(wasm_adds(f, &orders_batch, 300, true)) as Box<dyn FnMut()>)
            .collect();
        let mut refs: Vec<&mut dyn FnMut()> = sides.iter_mut().map(|s| s.as_mut() as &mut dyn FnMut()).collect();
        interleaved(300_000, &mut refs)
    };
    for (i, (name, _, _)) in configs.iter().enumerate() {
        report.row(&[
            name.to_string(),
            format!("{:.1}", blackhole_results[i]),
            format!("{:+.0}%", (blackhole_results[i] / blackhole_results[0] - 1.0) * 100.0),
            format!("{:.1}", csv_results[i]),
            format!("{:+.0}%", (csv_results[i] / csv_results[0] - 1.0) * 100.0),
        ]);
    }
}

fn instantiate(ctx: &Ctx, report: &mut Report) {
    report.section(
        "4. Instantiate + open (blackhole)",
        &[
            "allocator",
            "instantiate p50 µs",
            "+ open p50 µs",
            "+ open p99 µs",
            "live idle instances",
            "RSS each, instantiated",
            "RSS each, opened",
        ],
    );
    let cache = Some(ctx.scratch.join("cache"));
    // A pool reserves address space for every slot up front (4 GiB plus
    // guards per memory); 1,000 slots is the default and fits easily, a pool
    // of 10,000 would need over 100 TiB of address space.
    let pooled = Engine::new(EngineOptions::default().cache_dir(cache.clone())).expect("engine");
    let on_demand = Engine::new(EngineOptions::default().pooling(None).cache_dir(cache)).expect("engine");
    let engines = [("pooling", &pooled), ("on demand", &on_demand)];
    let components: Vec<SinkComponent> = engines
        .iter()
        .map(|(_, e)| e.load(sinkbox::builtins::get("blackhole").expect("builtin"), "blackhole").expect("load"))
        .collect();
    let mut new_times = vec![Vec::new(); 2];
    let mut open_times = vec![Vec::new(); 2];
    for _round in 0..20 {
        for (i, (_, engine)) in engines.iter().enumerate() {
            for _ in 0..100 {
                rt().block_on(async {
                    let started = Instant::now();
                    let limits = SandboxLimits::default();
                    let mut inst = SinkInstance::new(
                        engine,
                        &components[i],
                        "bench",
                        limits,
                        &Grants::default(),
                        Interrupt::never(),
                    )
                    .await
                    .expect("instantiate");
                    new_times[i].push(started.elapsed().as_secs_f64() * 1e6);
                    inst.open("{}", &context())
                        .await
                        .map_err(|e| e.into_failure("bench", sinkbox::Phase::Open))
                        .expect("open");
                    open_times[i].push(started.elapsed().as_secs_f64() * 1e6);
                    drop(black_box(inst));
                });
            }
        }
    }
    for (i, (name, engine)) in engines.iter().enumerate() {
        let mut opened = std::mem::take(&mut open_times[i]);
        opened.sort_by(f64::total_cmp);
        let alive = if engine.pooling_enabled() { 900 } else { 1_000 };
        let (rss_new, rss_open) = rss_per_instance(engine, &components[i], alive);
        report.row(&[
            format!("{name}{}", if i == 0 && !engine.pooling_enabled() { " (unavailable, fell back)" } else { "" }),
            format!("{:.1}", median(std::mem::take(&mut new_times[i]))),
            format!("{:.1}", percentile(&opened, 0.5)),
            format!("{:.1}", percentile(&opened, 0.99)),
            alive.to_string(),
            rss_new.map_or("n/a".into(), |b| format!("{:.1} KiB", b / 1024.0)),
            rss_open.map_or("n/a".into(), |b| format!("{:.1} KiB", b / 1024.0)),
        ]);
    }
    report.note(
        "2,000 instantiations per allocator, interleaved in rounds of 100; `open` parses the config inside the guest. \
         RSS: growth of the process's resident set with that many instances alive, divided by their number, \
         measured after instantiating them all and again after opening them all (the pool holds 1,000 slots by \
         default).",
    );
}

/// Resident set growth per instance with `n` instances alive: after
/// instantiating them, and after opening them.
fn rss_per_instance(engine: &Engine, component: &SinkComponent, n: usize) -> (Option<f64>, Option<f64>) {
    let per = |from: Option<u64>, to: Option<u64>| Some(to?.saturating_sub(from?) as f64 / n as f64);
    let before = current_rss();
    let mut live: Vec<SinkInstance> = (0..n).map(|_| new_instance(engine, component, &Grants::default())).collect();
    let instantiated = current_rss();
    for inst in &mut live {
        open(inst, "{}");
    }
    let opened = current_rss();
    drop(black_box(live));
    (per(before, instantiated), per(before, opened))
}

fn coldstart(ctx: &Ctx, report: &mut Report) {
    report.section(
        "5. Cold start: compile versus load from the compiled-component cache",
        &["component", "size", "compile ms", "cached load ms", "ratio"],
    );
    for name in ["file", "blackhole"] {
        let bytes = sinkbox::builtins::get(name).expect("builtin");
        let mut compile = Vec::new();
        let mut cached = Vec::new();
        let engine = &ctx.engine;
        let file = ctx.scratch.join(format!("cold-{name}.wasm"));
        std::fs::write(&file, bytes).expect("write component");
        engine.load_file(&file).expect("fill the cache");
        for _ in 0..5 {
            compile.push(engine.compile_uncached(bytes, name).expect("compile").load.elapsed.as_secs_f64() * 1e3);
            // As a new process would: from the on-disk cache, not memory.
            engine.forget_loaded();
            let c = engine.load_file(&file).expect("load");
            assert!(c.load.cached, "cache hit");
            cached.push(c.load.elapsed.as_secs_f64() * 1e3);
        }
        let (c, l) = (median(compile), median(cached));
        report.row(&[
            format!("Rust `{name}` sink"),
            format!("{} KiB", bytes.len() / 1024),
            format!("{c:.1}"),
            format!("{l:.2}"),
            format!("{:.0}x", c / l),
        ]);
    }
}

fn languages(ctx: &Ctx, report: &mut Report) {
    report.section(
        "7. One example sink per language: JSON order values to CSV (C: to JSON lines), batch 1000",
        &[
            "language",
            "component",
            "compile ms",
            "cached load ms",
            "instantiate + open p50 µs",
            "RSS per live instance",
            "ns/record",
            "vs Rust",
        ],
    );
    let columns = CSV_CONFIG_COLUMNS;
    let subjects: [(&str, Vec<u8>, String); 4] = [
        (
            "Rust (`builtin:file`)",
            sinkbox::builtins::get("file").expect("builtin").to_vec(),
            csv_config("/out/lang-rust.csv"),
        ),
        (
            "Python (componentize-py)",
            std::fs::read(sinkbox_test_artifacts::PY_CSV_SINK).expect("python example"),
            format!(r#"{{"path":"/out/lang-py.csv","columns":{columns}}}"#),
        ),
        (
            "JavaScript (jco, QuickJS)",
            std::fs::read(sinkbox_test_artifacts::JS_CSV_SINK).expect("js example"),
            format!(r#"{{"path":"/out/lang-js.csv","columns":{columns}}}"#),
        ),
        (
            "C (clang, JSONL)",
            std::fs::read(sinkbox_test_artifacts::C_JSONL_SINK).expect("c example"),
            r#"{"path":"/out/lang-c.jsonl"}"#.to_string(),
        ),
    ];
    let (data, count) = encode(1000, order_value);
    let batch = Batch { topic: "bench".into(), partition: 0, count, data };
    let mut rows = Vec::new();
    let mut instances = Vec::new();
    for (name, bytes, config) in &subjects {
        let compile = ctx.engine.compile_uncached(bytes, name).expect("compile");
        let file = ctx.scratch.join(format!("lang-{}.wasm", rows.len()));
        std::fs::write(&file, bytes).expect("write component");
        let cached = ctx.engine.load_file(&file).and_then(|_| ctx.engine.load_file(&file)).expect("load");
        assert!(cached.load.cached, "cache hit");
        let mut opens = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            drop(black_box(instance(&ctx.engine, &cached, &ctx.grants, config)));
            opens.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let before = current_rss();
        let live: Vec<SinkInstance> = (0..20).map(|_| instance(&ctx.engine, &cached, &ctx.grants, config)).collect();
        let rss = before.zip(current_rss()).map(|(b, a)| a.saturating_sub(b) as f64 / 20.0);
        drop(live);
        rows.push((name, bytes.len(), compile.load.elapsed, cached.load.elapsed, median(opens), rss));
        instances.push(instance(&ctx.engine, &cached, &ctx.grants, config));
    }
    // The per-record cost, interleaved across languages. Interpreted
    // languages get fewer batches per sample.
    let calls: Vec<u64> = vec![100, 3, 10, 100];
    let mut sides: Vec<Box<dyn FnMut() + '_>> = instances
        .iter_mut()
        .zip(&calls)
        .map(|(inst, &n)| Box::new(wasm_adds(inst, &batch, n, true)) as Box<dyn FnMut()>)
        .collect();
    let mut ns = Vec::new();
    for (i, side) in sides.iter_mut().enumerate() {
        let r = interleaved(calls[i] * 1000, &mut [side.as_mut() as &mut dyn FnMut()]);
        ns.push(r[0]);
    }
    for (i, (name, size, compile, load, open, rss)) in rows.into_iter().enumerate() {
        report.row(&[
            name.to_string(),
            format!("{:.1} MiB", size as f64 / (1 << 20) as f64),
            format!("{:.0}", compile.as_secs_f64() * 1e3),
            format!("{:.2}", load.as_secs_f64() * 1e3),
            format!("{open:.0}"),
            rss.map_or("n/a".into(), |b| format!("{:.0} KiB", b / 1024.0)),
            format!("{:.0}", ns[i]),
            format!("{:.1}x", ns[i] / ns[0]),
        ]);
    }
    report.note(
        "Compile: wasmtime compiling the component from scratch; cached load: `Engine::load_file` of an unchanged \
         file whose compiled code is in the cache, what a restart pays (issue target: at most 5 ms for Python and \
         JavaScript). Instantiate + open includes the sink's own `open` \
         (the Python and JavaScript examples read their state file there). RSS: 20 opened instances alive. \
         ns/record: `add` of 1,000 ~110-byte JSON orders, then `abort`, so no file I/O is timed.",
    );
}

fn e2e(ctx: &Ctx, report: &mut Report) {
    let mb: u64 = std::env::var("SINKBOX_BENCH_E2E_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    report.section(
        &format!("6. End to end: `sinkbox run`, {mb} MB JSONL into the file sink"),
        &["output", "records", "seconds", "records/s", "MB/s", "peak RSS"],
    );
    let small = data_file(mb);
    let big = big_records_file(mb);
    for (label, config, input) in [
        ("JSONL", r#"{"path":"/out/e2e.jsonl"}"#.to_string(), &small),
        ("CSV", csv_config("/out/e2e.csv").replace(r#","spill_bytes":1073741824"#, ""), &small),
        ("JSONL, 20 KiB values", r#"{"path":"/out/e2e.jsonl"}"#.to_string(), &big),
    ] {
        let size = std::fs::metadata(input).expect("input").len();
        let out = ctx.scratch.join("e2e-out");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("out dir");
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--cache-dir"])
            .arg(ctx.scratch.join("cache"))
            .args([
                "--log",
                "warn",
                "run",
                "--json",
                "--no-progress",
                "--sink",
                "builtin:file",
                "--config",
                &config,
                "--input",
            ])
            .arg(input)
            .arg("--dir")
            .arg(format!("{}:/out:rw", out.display()))
            .arg("--dead-letter")
            .arg(ctx.scratch.join("e2e-dead.jsonl"))
            .output()
            .expect("sinkbox runs");
        let wall = started.elapsed();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status");
        let records = status["committed"].as_u64().unwrap_or(0);
        let secs = wall.as_secs_f64();
        report.row(&[
            label.to_string(),
            records.to_string(),
            format!("{secs:.2}"),
            format!("{:.0}", records as f64 / secs),
            format!("{:.0}", size as f64 / 1e6 / secs),
            format!("{:.0} MiB", status["peak_rss"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64),
        ]);
        let _ = std::fs::remove_dir_all(&out);
    }
    report.note("Wall time of the whole process (start-up, compile-cache load, read, parse, encode, sandbox, write, fsync at every checkpoint of 10,000 records), default settings: batches of 1,000 records or 1 MiB, checkpoints of 10,000 records or 16 MiB held. The last row holds peak RSS under the same defaults with records 200 times larger.");
}

/// A JSONL file of about `mb` MB of order records, generated once and kept
/// in the target directory.
/// A JSONL file of about `mb` MB whose values each hold a 20 KiB string.
fn big_records_file(mb: u64) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{mb}mb-20kib.jsonl"));
    if std::fs::metadata(&path).map(|m| m.len() >= mb * 1_000_000).unwrap_or(false) {
        return path;
    }
    let pad = "x".repeat(20 << 10);
    let mut text = Vec::with_capacity((mb * 1_000_000) as usize + (21 << 10));
    let mut i = 0;
    while (text.len() as u64) < mb * 1_000_000 {
        text.extend_from_slice(format!("{{\"id\":{i},\"pad\":\"{pad}\"}}\n").as_bytes());
        i += 1;
    }
    std::fs::write(&path, text).expect("write bench input");
    path
}

fn data_file(mb: u64) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{mb}mb.jsonl"));
    if std::fs::metadata(&path).map(|m| m.len() >= mb * 1_000_000).unwrap_or(false) {
        return path;
    }
    let mut text = Vec::with_capacity((mb * 1_000_000) as usize + 200);
    let mut i = 0;
    while (text.len() as u64) < mb * 1_000_000 {
        text.extend_from_slice(&order_value(i));
        text.push(b'\n');
        i += 1;
    }
    std::fs::write(&path, text).expect("write bench input");
    path
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .map_or("?".into(), |kib| format!("{} GiB", kib / (1 << 20)));
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, {rustc}, wasmtime 48, release profile")
}

/// The Python CSV example end to end with `lanes = 1` and `lanes = 2`:
/// what spreading a slow-language sink over instances buys on this machine.
fn lanes(ctx: &Ctx, report: &mut Report) {
    let records: usize =
        std::env::var("SINKBOX_BENCH_LANES_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    report.section(
        &format!("9. Lanes: the Python CSV example end to end over {records} keyed JSON orders, `lanes` 1 against 2"),
        &["lanes", "records/s", "speed-up"],
    );
    let dir = ctx.scratch.join("lanes");
    std::fs::create_dir_all(&dir).expect("lanes dir");
    let input: String = (0..records)
        .map(|i| {
            let value = String::from_utf8(order_value(i)).expect("UTF-8");
            format!("{{\"key\":\"c{}\",\"value\":{value}}}\n", i % 97)
        })
        .collect();
    std::fs::write(dir.join("in.jsonl"), input).expect("input");
    let component = sinkbox_test_artifacts::PY_CSV_SINK;
    let run = |lanes: u32| -> f64 {
        let out = dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("out");
        let toml = format!(
            r#"
[pipeline]
name = "lanes"
resume = false
[source]
kind = "file"
path = "in.jsonl"
[[sink]]
name = "py"
component = {component:?}
lanes = {lanes}
config = {{ path = "/out/orders-{{lane}}.csv", columns = {CSV_CONFIG_COLUMNS} }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#
        );
        let file = sinkbox::PipelineFile::parse(&toml, "lanes.toml").expect("pipeline");
        let pipeline = file.build(&ctx.engine, &dir, "lanes").expect("build");
        let started = Instant::now();
        let (status, result) = pipeline.run(&sinkbox::Control::default());
        result.expect("the lanes pipeline runs");
        assert_eq!(status.committed, records as u64);
        records as f64 / started.elapsed().as_secs_f64()
    };
    run(1); // warm the compiled-component cache
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        one.push(run(1));
        two.push(run(2));
    }
    let (one, two) = (median(one), median(two));
    report.row(&["1".into(), format!("{one:.0}"), "1.00x".into()]);
    report.row(&["2".into(), format!("{two:.0}"), format!("{:.2}x", two / one)]);
    report.note(
        "`sinkbox::Pipeline::run` in this process, five runs each, alternating, medians; the records carry 97 \
         distinct keys, so `lanes = 2` spreads them over two instances, each its own task on the two-core runtime.",
    );
}

/// `sinkbox run` end to end against another build of it (the previous
/// release, say), alternating runs: `SINKBOX_BENCH_BASELINE=PATH`.
fn baseline(ctx: &Ctx, report: &mut Report) {
    let Some(other) = std::env::var_os("SINKBOX_BENCH_BASELINE") else { return };
    let mb: u64 = std::env::var("SINKBOX_BENCH_E2E_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    report.section(
        &format!("10. Against a baseline build: `sinkbox run`, {mb} MB JSONL into the file sink, alternating"),
        &["output", "baseline s", "this build s", "this / baseline"],
    );
    let input = data_file(mb);
    let run = |binary: &std::ffi::OsStr, config: &str, tag: &str| -> f64 {
        let out = ctx.scratch.join(format!("baseline-{tag}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("out dir");
        let started = Instant::now();
        let output = Command::new(binary)
            .arg("--cache-dir")
            .arg(ctx.scratch.join(format!("cache-{tag}")))
            .args(["--log", "warn", "run", "--no-progress", "--sink", "builtin:file", "--config", config, "--input"])
            .arg(&input)
            .arg("--dir")
            .arg(format!("{}:/out:rw", out.display()))
            .arg("--dead-letter")
            .arg(ctx.scratch.join(format!("baseline-{tag}-dead.jsonl")))
            .output()
            .expect("sinkbox runs");
        assert!(output.status.success(), "{tag}: {}", String::from_utf8_lossy(&output.stderr));
        started.elapsed().as_secs_f64()
    };
    let this = std::ffi::OsStr::new(env!("CARGO_BIN_EXE_sinkbox"));
    for (label, config) in [
        ("JSONL", r#"{"path":"/out/e2e.jsonl"}"#.to_string()),
        ("CSV", csv_config("/out/e2e.csv").replace(r#","spill_bytes":1073741824"#, "")),
    ] {
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            old.push(run(&other, &config, "old"));
            new.push(run(this, &config, "new"));
        }
        let (old, new) = (median(old), median(new));
        report.row(&[label.into(), format!("{old:.2}"), format!("{new:.2}"), format!("{:.2}x", new / old)]);
    }
    report.note(&format!(
        "Baseline: {}. Five runs each, alternating, medians of the whole process's wall time.",
        std::path::Path::new(&other).display()
    ));
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("out")).expect("scratch");
    let engine = Engine::new(EngineOptions::default().cache_dir(Some(scratch.join("cache")))).expect("engine");
    let blackhole = engine.load(sinkbox::builtins::get("blackhole").expect("builtin"), "blackhole").expect("load");
    let file = engine.load(sinkbox::builtins::get("file").expect("builtin"), "file").expect("load");
    let grants = Grants {
        dirs: vec![sinkbox::DirGrant { host: scratch.join("out"), guest: "/out".into(), writable: true }],
        ..Default::default()
    };
    let ctx = Ctx { engine, blackhole, file, scratch: scratch.clone(), grants };
    let mut report = Report { markdown: String::new() };
    let command = format!(
        "cargo bench -p sinkbox --bench sinkbox{}",
        if wanted.is_empty() { String::new() } else { format!(" -- {}", wanted.join(" ")) }
    );
    let started = Instant::now();
    type Section = fn(&Ctx, &mut Report);
    let sections: [(&str, Section); 9] = [
        ("boundary", boundary),
        ("realistic", realistic),
        ("limits", limits),
        ("instantiate", instantiate),
        ("coldstart", coldstart),
        ("e2e", e2e),
        ("languages", languages),
        ("lanes", lanes),
        ("baseline", baseline),
    ];
    for (name, run) in sections {
        if want(name) {
            run(&ctx, &mut report);
        }
    }
    let header = format!(
        "# Benchmarks\n\nCommand: `{command}` (from the repository root).\n\nMachine: {}.\n\nMedians of {} interleaved samples per cell; ratios are of medians measured side by side in the same process run. Took {:.0} s.\n",
        machine(),
        samples(),
        started.elapsed().as_secs_f64()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    std::fs::write(root.join("BENCHMARKS.md"), format!("{header}{}", report.markdown)).expect("write BENCHMARKS.md");
    println!("\nwrote BENCHMARKS.md");
    let _ = std::fs::remove_dir_all(&scratch);
}
