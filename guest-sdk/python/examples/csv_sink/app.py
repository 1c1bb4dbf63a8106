"""JSON records to CSV lines in a granted directory, exactly once: the
Python twin of the Rust `file` sink in CSV mode.

Config: {"path": "/out/orders.csv", "columns": ["id", "total"]}
"""

import csv
import io
import json
import os

import sinkbox_sdk


class CsvSink(sinkbox_sdk.Sink):
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path", "columns"],
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    }

    def open(self, config):
        self.path = config["path"]
        self.columns = config["columns"]
        self.state_path = self.path + ".sinkbox-state"
        try:
            with open(self.state_path) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            self.state = {"len": size, "offsets": {}}
            self._write_state(self.state)
        # Drop whatever a crashed flush wrote past the last flushed length.
        with open(self.path, "a+b") as f:
            f.truncate(self.state["len"])
        self.pending = {}
        self.buffer = io.StringIO()
        self._start_buffer()

    def _start_buffer(self):
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")
        if self.state["len"] == 0:
            self.writer.writerow(self.columns)

    def add_batch(self, records):
        # Records at or below the flushed offset were written before a
        # restart; the runtime is replaying them.
        rejected = []
        for record in records:
            partition = "0"
            if record.offset <= self.state["offsets"].get(partition, -1):
                continue
            try:
                value = record.json()
            except ValueError as e:
                rejected.append((record.offset, f"value is not a JSON object: {e}"))
                continue
            if not isinstance(value, dict):
                rejected.append((record.offset, "value is not a JSON object"))
                continue
            self.writer.writerow([_cell(value.get(c)) for c in self.columns])
            self.pending[partition] = record.offset
        if rejected:
            raise sinkbox_sdk.RejectedRecords(rejected)

    def flush(self):
        data = self.buffer.getvalue().encode()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        offsets = dict(self.state["offsets"])
        offsets.update(self.pending)
        state = {"len": self.state["len"] + len(data), "offsets": offsets}
        self._write_state(state)
        self.state = state
        self.pending = {}
        self._start_buffer()

    def abort(self):
        self.pending = {}
        self._start_buffer()

    def _write_state(self, state):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


Sink = sinkbox_sdk.export(CsvSink)
