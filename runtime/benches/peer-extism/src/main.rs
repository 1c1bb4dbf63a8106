//! Peer benchmark: the blackhole sink under Sinkbox against the same logic
//! as an Extism plugin, in one process, interleaved sample by sample.
//! Writes section 8 of BENCHMARKS.md (replacing any earlier one).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use extism::{Manifest, Plugin, Wasm};
use sinkbox::{Batch, Engine, EngineOptions, Grants, SandboxLimits, SinkInstance, SinkMetrics};
use sinkbox_format::{BatchWriter, RecordRef};

const SAMPLES: usize = 11;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let plugin_path = std::env::args().nth(1).expect("usage: sinkbox-peer-extism PLUGIN.wasm");
    let engine = Engine::new(EngineOptions::default().cache_dir(None)).expect("engine");
    let component = engine.load(sinkbox::builtins::get("blackhole").expect("builtin"), "blackhole").expect("load");
    let mut metrics = SinkMetrics::new("peer");
    let mut instance =
        SinkInstance::new(&engine, &component, "peer", SandboxLimits::default(), &Grants::default()).expect("instance");
    instance.open("{}", &mut metrics).map_err(|e| e.into_failure("peer", sinkbox::Phase::Open)).expect("open");
    // Extism with a call timeout, so both sides pay for interruptibility.
    let manifest = Manifest::new([Wasm::file(&plugin_path)]).with_timeout(std::time::Duration::from_secs(10));
    let mut plugin = Plugin::new(&manifest, [], true).expect("extism plugin");

    let mut rows = String::new();
    for batch_size in [100usize, 1000, 10_000] {
        let mut w = BatchWriter::default();
        for i in 0..batch_size {
            let key = format!("key-{i:012}");
            w.push(&RecordRef {
                offset: i as u64,
                timestamp: Some(1),
                key: Some(key.as_bytes()),
                value: &[b'x'; 100],
                headers: &[(b"source", b"bench")],
            });
        }
        let (data, count) = w.finish();
        let batch = Batch { topic: "bench".into(), partition: 0, count, data: data.clone() };
        let mut input = count.to_le_bytes().to_vec();
        input.extend_from_slice(&data);
        let calls = 1_000_000 / batch_size;
        let mut sinkbox_ns = Vec::new();
        let mut extism_ns = Vec::new();
        for sample in 0..=SAMPLES {
            let started = Instant::now();
            for _ in 0..calls {
                instance.add(black_box(&batch), &mut metrics).expect("sinkbox add");
            }
            let s = started.elapsed().as_nanos() as f64 / 1e6;
            let started = Instant::now();
            for _ in 0..calls {
                let n: u64 = plugin.call("add", black_box(input.as_slice())).expect("extism add");
                assert_eq!(n, u64::from(count));
            }
            let e = started.elapsed().as_nanos() as f64 / 1e6;
            if sample > 0 {
                sinkbox_ns.push(s);
                extism_ns.push(e);
            }
        }
        let (s, e) = (median(sinkbox_ns), median(extism_ns));
        let row = format!("| {batch_size} | {s:.1} | {e:.1} | {:.2}x |\n", e / s);
        print!("{row}");
        rows.push_str(&row);
    }
    let section = format!(
        "\n## 8. Peer: Extism 1.30 (wasmtime 43) running the same blackhole logic\n\n\
         Command: `runtime/benches/peer-extism/run.sh`. Medians of {SAMPLES} interleaved samples of 1,000,000 \
         records; 100-byte values, 16-byte keys, one header; both sides with a call timeout (epochs) and no fuel.\n\n\
         | batch | sinkbox ns/record | Extism ns/record | Extism / sinkbox |\n| --- | --- | --- | --- |\n{rows}\n\
         The Extism plugin decodes the same packed batch with the same crate; its input is copied into Extism's \
         kernel memory and then into the plugin, where sinkbox lowers the batch straight into the guest.\n"
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(at) = text.find("\n## 8. Peer") {
        text.truncate(at);
    }
    text.push_str(&section);
    std::fs::write(&path, text).expect("write BENCHMARKS.md");
    println!("updated {}", path.display());
}
