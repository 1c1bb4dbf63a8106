// JSON records to CSV lines in a granted directory, exactly once: the
// JavaScript twin of the Rust `file` sink in CSV mode.
//
// Config: {"path": "/out/orders.csv", "columns": ["id", "total"]}

import { Sink, RejectedRecords, exportSink, files, utf8Decode, utf8Encode } from '../../sinkbox-sdk.js';

function cell(value) {
  if (value === undefined || value === null) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

class CsvSink extends Sink {
  static configSchema = {
    type: 'object',
    additionalProperties: false,
    required: ['path', 'columns'],
    properties: {
      path: { type: 'string', minLength: 1 },
      columns: { type: 'array', items: { type: 'string' }, minItems: 1 },
    },
  };

  open(config) {
    this.path = config.path;
    this.columns = config.columns;
    this.statePath = this.path + '.sinkbox-state';
    const saved = files.read(this.statePath);
    if (saved === null) {
      // First open: what the file holds now predates the sink.
      this.state = { len: files.size(this.path), offsets: {} };
      files.replace(this.statePath, utf8Encode(JSON.stringify(this.state)));
    } else {
      this.state = JSON.parse(utf8Decode(saved));
    }
    // Drop whatever a crashed flush wrote past the last flushed length.
    files.truncate(this.path, this.state.len);
    this.pending = {};
    this.startBuffer();
  }

  startBuffer() {
    this.lines = this.state.len === 0 ? [this.columns.map(cell).join(',')] : [];
  }

  addBatch(records) {
    const rejected = [];
    const done = this.state.offsets['0'] ?? -1;
    for (const record of records) {
      // At or below the flushed offset: written before a restart, replayed now.
      if (record.offset <= done) continue;
      let value;
      try {
        value = record.json();
      } catch (e) {
        rejected.push([record.offset, `value is not a JSON object: ${e.message}`]);
        continue;
      }
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        rejected.push([record.offset, 'value is not a JSON object']);
        continue;
      }
      this.lines.push(this.columns.map((c) => cell(value[c])).join(','));
      this.pending['0'] = record.offset;
    }
    if (rejected.length) throw new RejectedRecords(rejected);
  }

  flush() {
    const bytes = utf8Encode(this.lines.length ? this.lines.join('\n') + '\n' : '');
    files.writeAt(this.path, this.state.len, bytes);
    const state = { len: this.state.len + bytes.length, offsets: { ...this.state.offsets, ...this.pending } };
    files.replace(this.statePath, utf8Encode(JSON.stringify(state)));
    this.state = state;
    this.pending = {};
    this.startBuffer();
  }

  abort() {
    this.pending = {};
    this.startBuffer();
  }
}

export const sink = exportSink(CsvSink);
