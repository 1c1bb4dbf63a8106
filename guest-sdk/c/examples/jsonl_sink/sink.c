/* JSON values to JSON lines in a granted directory, exactly once: the C twin
 * of the Rust `file` sink in JSONL mode.
 *
 * Config: {"path": "/out/records.jsonl"}
 *
 * add buffers lines (a value that is not JSON on one line is rejected), abort
 * drops the buffer, flush appends it, syncs, then atomically replaces
 * PATH.sinkbox-state ({"len":N,"offset":M}: flushed length, highest flushed
 * offset). open truncates to the flushed length and skips records at or
 * below the flushed offset, which the runtime replays after a crash. */

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

#include "sinkbox_sdk.h"

static char *path;
static char *state_path;
static char *buffer;
static size_t buffer_len, buffer_cap;
static uint64_t flushed_len;
static int64_t flushed_offset = -1, pending_offset = -1;

static void append(const uint8_t *bytes, size_t n) {
  if (buffer_len + n > buffer_cap) {
    buffer_cap = (buffer_len + n) * 2;
    buffer = realloc(buffer, buffer_cap);
    if (!buffer) abort();
  }
  memcpy(buffer + buffer_len, bytes, n);
  buffer_len += n;
}

static bool parse_config(const sinkbox_json_t *config, sinkbox_error_t *err) {
  if (!sinkbox_json_string(config, "path", SINKBOX_REQUIRED, &path, err)) return false;
  state_path = malloc(strlen(path) + sizeof ".sinkbox-state");
  if (!state_path) abort();
  strcat(strcpy(state_path, path), ".sinkbox-state");
  return true;
}

static bool write_state(uint64_t len, int64_t offset) {
  char *tmp = malloc(strlen(state_path) + sizeof ".tmp");
  if (!tmp) abort();
  strcat(strcpy(tmp, state_path), ".tmp");
  FILE *f = fopen(tmp, "w");
  bool ok = f != NULL;
  if (f) {
    fprintf(f, "{\"len\":%llu,\"offset\":%lld}", (unsigned long long)len, (long long)offset);
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
  }
  ok = ok && rename(tmp, state_path) == 0;
  free(tmp);
  return ok;
}

static bool jsonl_open(const sinkbox_json_t *config, const sinkbox_context_t *context, sinkbox_error_t *err) {
  (void)context;
  if (!parse_config(config, err)) return false;
  FILE *state = fopen(state_path, "r");
  if (state) {
    unsigned long long len;
    long long offset;
    int read = fscanf(state, "{\"len\":%llu,\"offset\":%lld}", &len, &offset);
    fclose(state);
    if (read != 2) return sinkbox_fatal(err, "corrupt state file");
    flushed_len = len;
    flushed_offset = offset;
  } else {
    /* First open: what the file holds now predates the sink. */
    FILE *f = fopen(path, "a");
    if (!f) return sinkbox_fatal(err, "cannot open the output file");
    fseek(f, 0, SEEK_END);
    flushed_len = (uint64_t)ftell(f);
    fclose(f);
    if (!write_state(flushed_len, -1)) return sinkbox_fatal(err, "cannot write the state file");
  }
  /* Drop whatever a crashed flush wrote past the last flushed length. */
  if (truncate(path, (off_t)flushed_len) != 0 && errno != ENOENT) return sinkbox_fatal(err, "cannot truncate the output file");
  return true;
}

static bool jsonl_add(const sinkbox_batch_t *batch, sinkbox_error_t *err) {
  sinkbox_records_t it = sinkbox_records(batch);
  sinkbox_rejections_t rejected = {0};
  sinkbox_record_t r;
  int more;
  bool ok = true;
  while ((more = sinkbox_records_next(&it, &r)) == 1) {
    if ((int64_t)r.offset <= flushed_offset) continue; /* replayed after a restart */
    if (memchr(r.value, '\n', r.value_len)) {
      sinkbox_reject(&rejected, r.offset, "value spans several lines");
    } else if (!sinkbox_json_valid(r.value, r.value_len)) {
      sinkbox_reject(&rejected, r.offset, "value is not JSON");
    } else {
      append(r.value, r.value_len);
      append((const uint8_t *)"\n", 1);
      pending_offset = (int64_t)r.offset;
    }
  }
  if (more < 0) ok = sinkbox_fatal(err, "malformed record batch");
  else if (sinkbox_rejected(err, &rejected)) ok = false;
  return ok;
}

static bool jsonl_flush(sinkbox_snapshot_t *snapshot, sinkbox_error_t *err) {
  (void)snapshot;
  FILE *f = fopen(path, "a");
  if (!f) return sinkbox_retryable(err, "cannot open the output file");
  bool ok = fwrite(buffer, 1, buffer_len, f) == buffer_len && fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = fclose(f) == 0 && ok;
  if (!ok) return sinkbox_retryable(err, "cannot write the output file");
  int64_t offset = pending_offset > flushed_offset ? pending_offset : flushed_offset;
  if (!write_state(flushed_len + buffer_len, offset)) return sinkbox_retryable(err, "cannot write the state file");
  flushed_len += buffer_len;
  flushed_offset = offset;
  buffer_len = 0;
  return true;
}

static void jsonl_abort(void) {
  buffer_len = 0;
  pending_offset = flushed_offset;
}

static bool jsonl_close(sinkbox_error_t *err) {
  (void)err;
  free(buffer);
  buffer = NULL;
  free(path);
  free(state_path);
  path = state_path = NULL;
  buffer_len = buffer_cap = 0;
  return true;
}

SINKBOX_EXPORT(.config_schema = "{\"type\":\"object\",\"required\":[\"path\"],\"additionalProperties\":false,"
                                "\"properties\":{\"path\":{\"type\":\"string\",\"minLength\":1}}}",
               .open = jsonl_open, .add = jsonl_add, .flush = jsonl_flush, .abort = jsonl_abort, .close = jsonl_close);
