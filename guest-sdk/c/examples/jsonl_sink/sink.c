/* JSON values to JSON lines in a granted directory, exactly once: the C twin
 * of the Rust `file` sink in JSONL mode.
 *
 * Config: {"path": "/out/records.jsonl"}. The path may hold {partition} and
 * {lane}; a sink that runs on several lanes or partitions needs them (each
 * instance writes its own file), and refuses to open without them.
 *
 * add checks each value (one line of JSON, or the record is rejected to the
 * dead-letter queue) and buffers it; abort drops the buffer; flush appends
 * the buffer to the output, syncs, and returns the output's new length as
 * the snapshot. The runtime hands the last committed snapshot back to open,
 * which cuts off whatever a checkpoint that was never committed wrote; the
 * records after it are replayed. So the output gets each record exactly
 * once, with no state file and no offset bookkeeping: sinkbox_output_t in
 * sinkbox_sdk.h does it, and README.md explains the pattern. */

#include "sinkbox_sdk.h"

static const char SCHEMA[] =
    "{\"type\":\"object\",\"required\":[\"path\"],\"additionalProperties\":false,"
    "\"properties\":{\"path\":{\"type\":\"string\",\"minLength\":1,"
    "\"description\":\"the output file; {partition} and {lane} are replaced by the instance's\"}}}";

static sinkbox_output_t output;
static sinkbox_buf_t lines;
static uint64_t buffered;   /* records in `lines` */
static uint64_t unreported; /* records written since the last status */

static bool jsonl_open(const sinkbox_json_t *config, const sinkbox_context_t *context, sinkbox_error_t *err) {
  char *path;
  if (!sinkbox_json_string(config, "path", SINKBOX_REQUIRED, &path, err)) return false;
  bool ok = sinkbox_output_open(&output, path, context, NULL, 0, err);
  free(path);
  return ok;
}

static bool jsonl_add(const sinkbox_batch_t *batch, sinkbox_error_t *err) {
  sinkbox_records_t it = sinkbox_records(batch);
  sinkbox_rejections_t rejected = {0};
  sinkbox_record_t r;
  int more;
  while ((more = sinkbox_records_next(&it, &r)) == 1) {
    if (memchr(r.value, '\n', r.value_len)) {
      sinkbox_reject(&rejected, r.offset, "value spans several lines");
    } else if (!sinkbox_json_valid(r.value, r.value_len)) {
      sinkbox_reject(&rejected, r.offset, "value is not JSON");
    } else {
      sinkbox_buf_append(&lines, r.value, r.value_len);
      sinkbox_buf_append(&lines, "\n", 1);
      buffered++;
    }
  }
  if (more < 0) {
    sinkbox_rejections_free(&rejected);
    return sinkbox_fatal(err, "malformed record batch");
  }
  return !sinkbox_rejected(err, &rejected);
}

static bool jsonl_flush(sinkbox_snapshot_t *snapshot, sinkbox_error_t *err) {
  if (!sinkbox_output_append(&output, lines.data, lines.len, snapshot, err)) return false;
  lines.len = 0;
  unreported += buffered;
  buffered = 0;
  return true;
}

static bool jsonl_status(sinkbox_status_t *status) {
  status->written = unreported;
  unreported = 0;
  return true;
}

static void jsonl_abort(void) {
  lines.len = 0;
  buffered = 0;
}

static bool jsonl_close(sinkbox_error_t *err) {
  (void)err;
  sinkbox_buf_free(&lines);
  sinkbox_output_close(&output);
  return true;
}

SINKBOX_EXPORT(.config_schema = SCHEMA, .open = jsonl_open, .add = jsonl_add, .flush = jsonl_flush,
               .status = jsonl_status, .abort = jsonl_abort, .close = jsonl_close);
