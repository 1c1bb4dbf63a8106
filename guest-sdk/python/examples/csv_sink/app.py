"""JSON records to CSV lines in a granted directory, exactly once: the
Python twin of the Rust `file` sink in CSV mode.

Config: {"path": "/out/orders.csv", "columns": ["id", "total"]}; the path
may hold `{partition}` and `{lane}` (required when instances would share it).

Exactly once without a state file: each flush returns the file's length as
the snapshot, the runtime commits it with the source offsets and hands it
back to `open`, which cuts off what a flush wrote after it (those records
are replayed). `OutputFile` does the checking and rolling back.
"""

import csv
import io
import json

import sinkbox_sdk
from sinkbox_sdk import Rejected


class CsvSink(sinkbox_sdk.BatchingSink):
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path", "columns"],
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    }

    def open(self, config, context):
        self.columns = config["columns"]
        self.out = sinkbox_sdk.OutputFile(config["path"], context)

    def prepare(self, record):
        # At add time, so a bad record goes to the dead-letter queue at once.
        try:
            value = record.json()
        except ValueError as e:
            raise Rejected(f"value is not a JSON object: {e}")
        if not isinstance(value, dict):
            raise Rejected("value is not a JSON object")
        return [_cell(value.get(c)) for c in self.columns]

    def write(self, batch):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if self.out.length == 0:
            writer.writerow(self.columns)
        writer.writerows(batch)
        self.out.append(text.getvalue().encode())

    def snapshot(self):
        return self.out.snapshot()

    def abort(self):
        super().abort()
        self.out.rollback()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


Sink = sinkbox_sdk.export(CsvSink)
