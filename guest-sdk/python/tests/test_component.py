"""The example and the scaffold built into real components with
componentize-py and driven through the WIT exports with wasmtime-py: the
glue's lowering (context, snapshot, status, error variants) as the runtime
sees it. Skipped where componentize-py or wasmtime-py is missing; each build
takes about 20 s."""

import json
import shutil
import struct
import subprocess
from types import SimpleNamespace

import pytest
from conftest import PYTHON_SDK, REPO

wasmtime = pytest.importorskip("wasmtime")
component = pytest.importorskip("wasmtime.component")
if shutil.which("componentize-py") is None:
    pytest.skip("componentize-py is not installed", allow_module_level=True)

WIT = REPO / "wit"
WORLD = "sinkbox:sink/sink-world"


def build(app_dir, out):
    subprocess.run(
        ["componentize-py", "-d", str(WIT), "-w", WORLD, "componentize", "app"]
        + ["-p", str(app_dir), "-p", str(PYTHON_SDK), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def engine():
    return wasmtime.Engine()


@pytest.fixture(scope="module")
def csv_component(engine, tmp_path_factory):
    out = build(PYTHON_SDK / "examples/csv_sink", tmp_path_factory.mktemp("csv") / "csv.wasm")
    return component.Component.from_file(engine, str(out))


@pytest.fixture(scope="module")
def scaffold_component(engine, tmp_path_factory):
    project = tmp_path_factory.mktemp("scaffold")
    text = (REPO / "runtime/templates/python/app.py.tmpl").read_text().replace("{{name}}", "my-python-sink")
    (project / "app.py").write_text(text)
    out = build(project, project / "scaffold.wasm")
    return component.Component.from_file(engine, str(out))


class Runtime:
    """Just enough of the runtime: instances with a preopened /out."""

    def __init__(self, engine, comp, out_dir):
        self.engine, self.component, self.out_dir = engine, comp, out_dir
        self.logs = []
        self.linker = component.Linker(engine)
        self.linker.add_wasip2()
        with self.linker.root() as root, root.add_instance("sinkbox:sink/host@0.2.0") as host:
            host.add_func("log", lambda store, level, message, fields: self.logs.append(message))

    def instance(self):
        store = wasmtime.Store(self.engine)
        wasi = wasmtime.WasiConfig()
        wasi.preopen_dir(str(self.out_dir), "/out")
        store.set_wasi(wasi)
        instance = self.linker.instantiate(store, self.component)
        interface = instance.get_export_index(store, "sinkbox:sink/sink@0.2.0")

        def export(name):
            func = instance.get_func(store, instance.get_export_index(store, name, interface))

            def call(*args):
                result = func(store, *args)
                func.post_return(store)
                return result

            return call

        names = ["config-schema", "open", "add", "flush", "status", "abort", "close"]
        return SimpleNamespace(**{n.replace("-", "_"): export(n) for n in names})


def context(snapshot=None, probe=False, lanes=1):
    fields = {"pipeline": "p", "sink": "s", "topic": "t", "partition": 0, "lane": 0, "lanes": lanes}
    fields.update({"worker-index": 0, "worker-count": 1, "snapshot": snapshot, "probe": probe})
    return SimpleNamespace(**fields)


def batch(offsets, values=None):
    data = b""
    for i, offset in enumerate(offsets):
        value = (values[i] if values else json.dumps({"n": offset})).encode()
        data += struct.pack("<QqIII", offset, 1, 1, len(value), 1) + b"k" + value
        data += struct.pack("<I", 1) + b"h" + struct.pack("<I", 1) + b"v"
    return SimpleNamespace(topic="t", partition=0, count=len(offsets), data=data)


def variant(result):
    """(tag, payload) of an error variant, or None for ok."""
    return None if result is None or isinstance(result, bytes) else (result.tag, result.payload)


CONFIG = json.dumps({"path": "/out/out.csv", "columns": ["n"]})


def csv_lines(offsets):
    return "n\n" + "".join(f"{o}\n" for o in offsets)


def test_the_example_component_follows_the_contract(engine, csv_component, tmp_path):
    runtime = Runtime(engine, csv_component, tmp_path)
    out = tmp_path / "out.csv"
    schema = json.loads(runtime.instance().config_schema())
    assert schema["required"] == ["path", "columns"]
    tag, message = variant(runtime.instance().open("not json", context()))
    assert (tag, message.startswith("config is not JSON")) == ("fatal", True)

    # The compliance harness's sequence.
    sink = runtime.instance()
    assert sink.open(CONFIG, context()) is None
    initial = sink.flush()
    assert json.loads(initial) == {"len": 0, "path": "/out/out.csv"}
    sink.add(batch(range(10)))
    sink.abort()
    sink.add(batch(range(10)))
    sink.add(batch(range(10, 25)))
    snapshot = sink.flush()
    status = sink.status()
    assert (status.written, status.filtered, status.custom) == (25, 0, [])
    sink.add(batch(range(25, 30)))
    sink.abort()
    assert sink.flush() == snapshot
    assert sink.close() is None
    assert out.read_text() == csv_lines(range(25))

    # Rejections name their offsets; the rest of the batch is taken.
    sink = runtime.instance()
    assert sink.open(CONFIG, context(snapshot=snapshot)) is None
    tag, rejections = variant(sink.add(batch([25, 26, 27], ['{"n":25}', "not json", "[1]"])))
    assert tag == "rejected"
    assert [(r.offset, r.reason.startswith("value is not a JSON object")) for r in rejections] == [
        (26, True),
        (27, True),
    ]
    assert json.loads(sink.flush())["len"] == len(csv_lines(range(26)))

    # That checkpoint was never committed: a fresh instance cuts it off.
    assert runtime.instance().open(CONFIG, context(snapshot=snapshot)) is None
    assert out.read_text() == csv_lines(range(25))

    # A probe touches nothing, even bytes past the snapshot.
    with out.open("a") as f:
        f.write("99\n")
    probe = runtime.instance()
    assert probe.open(CONFIG, context(snapshot=snapshot, probe=True)) is None
    assert probe.add(batch(range(25, 28))) is None
    probe.abort()
    assert probe.close() is None
    assert out.read_text() == csv_lines(range(25)) + "99\n"

    # What changed outside sinkbox is named.
    out.write_text("n\n")
    tag, message = variant(runtime.instance().open(CONFIG, context(snapshot=snapshot)))
    assert tag == "fatal" and "is 2 bytes but 67 were committed" in message
    tag, message = variant(runtime.instance().open(CONFIG, context()))
    assert tag == "fatal" and "already holds 2 bytes this pipeline did not write" in message
    tag, message = variant(runtime.instance().open(CONFIG, context(lanes=2)))
    assert tag == "fatal" and "no {lane} placeholder" in message
    tag, message = variant(runtime.instance().open(CONFIG, context(snapshot=b"\x01")))
    assert tag == "fatal" and "is not one an output file wrote" in message


def test_the_scaffold_component_writes_the_sample_and_dead_letters_the_bad_line(engine, scaffold_component, tmp_path):
    runtime = Runtime(engine, scaffold_component, tmp_path)
    sample = (REPO / "runtime/templates/sample.jsonl").read_text().splitlines()
    sink = runtime.instance()
    assert sink.open(json.dumps({"path": "/out/records.jsonl"}), context()) is None
    sink.flush()
    tag, rejections = variant(sink.add(batch(range(len(sample)), sample)))
    assert tag == "rejected" and [r.offset for r in rejections] == [2]
    assert rejections[0].reason.startswith("not JSON")
    sink.flush()
    assert sink.status().written == 3
    assert sink.close() is None
    lines = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert [line["offset"] for line in lines] == [0, 1, 3]
    assert lines[1]["value"]["item"] == "scones"
