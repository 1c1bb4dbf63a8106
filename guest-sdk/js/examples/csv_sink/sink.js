// JSON records to CSV lines in a granted directory, exactly once: the
// JavaScript twin of the Rust `file` sink in CSV mode.
//
// Config: {"path": "/out/orders.csv", "columns": ["id", "total"]}; the path
// may hold `{partition}` and `{lane}` (required when instances would share it).
//
// Exactly once without a state file: each flush returns the file's length as
// the snapshot, the runtime commits it with the source offsets and hands it
// back to `open`, which cuts off what a flush wrote after it (those records
// are replayed). `OutputFile` does the checking and rolling back.

import { BatchingSink, Rejected, OutputFile, exportSink } from '../../sinkbox-sdk.js';

function cell(value) {
  if (value === undefined || value === null) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

class CsvSink extends BatchingSink {
  static configSchema = {
    type: 'object',
    additionalProperties: false,
    required: ['path', 'columns'],
    properties: {
      path: { type: 'string', minLength: 1 },
      columns: { type: 'array', items: { type: 'string' }, minItems: 1 },
    },
  };

  open(config, context) {
    this.columns = config.columns;
    this.out = new OutputFile(config.path, context);
  }

  prepare(record) {
    // At add time, so a bad record goes to the dead-letter queue at once;
    // json() rejects a value that is not UTF-8 JSON.
    const value = record.json();
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Rejected('value is not a JSON object');
    }
    return this.columns.map((c) => cell(value[c])).join(',');
  }

  write(batch) {
    const header = this.out.length === 0 ? this.columns.map(cell).join(',') + '\n' : '';
    this.out.append(header + batch.items.join('\n') + '\n');
  }

  snapshot() {
    return this.out.snapshot();
  }

  abort() {
    super.abort();
    this.out.rollback();
  }
}

export const sink = exportSink(CsvSink);
