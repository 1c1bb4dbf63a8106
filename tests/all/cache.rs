//! The compiled-component cache: hits across engines, and never stale.

use sinkbox::{Engine, EngineOptions, Grants, Interrupt, SandboxLimits, SinkInstance};

use crate::Scratch;

fn schema(engine: &Engine, component: &sinkbox::SinkComponent) -> String {
    sinkbox::runtime().unwrap().block_on(async {
        let limits = SandboxLimits::default();
        let mut instance =
            SinkInstance::new(engine, component, "cache", limits, &Grants::default(), Interrupt::never())
                .await
                .unwrap();
        instance.config_schema().await.unwrap().unwrap_or_default()
    })
}

#[test]
fn a_restart_loads_from_the_cache_and_a_changed_file_is_recompiled() {
    let s = Scratch::new("cache");
    let file = sinkbox::builtins::get("file").unwrap();
    let blackhole = sinkbox::builtins::get("blackhole").unwrap();
    let path = s.path("sink.wasm");
    std::fs::write(&path, file).unwrap();
    let engine = || Engine::new(EngineOptions::default().pooling(None).cache_dir(Some(s.path("cache")))).unwrap();

    let first = engine().load_file(&path).unwrap();
    assert!(!first.load.cached, "compiled the first time");
    // A new engine (a restart) finds the compiled code.
    let again = engine();
    let second = again.load_file(&path).unwrap();
    assert!(second.load.cached, "loaded from the cache");
    assert!(schema(&again, &second).contains("spill_bytes"), "it is the file sink");

    // Replace the file with another component of the same name: it must
    // not load the old compiled code.
    std::fs::write(&path, blackhole).unwrap();
    let third = engine();
    let changed = third.load_file(&path).unwrap();
    assert!(!changed.load.cached, "a changed file is compiled again");
    assert!(schema(&third, &changed).contains("log_flushes"), "it is the blackhole sink");
    // The same bytes under another name share the compiled code.
    let copy = s.path("copy.wasm");
    std::fs::write(&copy, blackhole).unwrap();
    assert!(engine().load_file(&copy).unwrap().load.cached);
}
