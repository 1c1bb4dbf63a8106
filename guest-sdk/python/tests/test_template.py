"""The `sinkbox new --lang python` scaffold, rendered and run on the
project's sample input, as tests/all/cli.rs runs the built component."""

import json

import pytest
from conftest import REPO, load_module

from sinkbox_sdk.testing import FakeHost

TEMPLATES = REPO / "runtime/templates"


@pytest.fixture(scope="module")
def app():
    path = TEMPLATES / "python/app.py.tmpl"
    return load_module("scaffold_app", path, path.read_text().replace("{{name}}", "my-python-sink"))


def test_the_scaffold_writes_the_sample_as_json_lines_once(app, tmp_path):
    config = json.loads((TEMPLATES / "config.json").read_text())
    assert config["path"].startswith("/out/")
    out = tmp_path / "records.jsonl"
    sample = (TEMPLATES / "sample.jsonl").read_bytes().splitlines()
    h = FakeHost(app.Sink, {"path": str(out)})
    h.run(sample)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["offset"] for line in lines] == [0, 1, 3]
    assert lines[1]["value"]["item"] == "scones"
    assert [(d.offset, d.reason.startswith("not JSON")) for d in h.dead_letters] == [(2, True)]
    # A restart that lost its checkpoint's commit writes nothing twice.
    h.open()
    h.add(sample[:2])
    h.flush(commit=False)
    h.restart()
    h.flush()
    assert [json.loads(line)["offset"] for line in out.read_text().splitlines()] == [0, 1, 3, 4, 5]
