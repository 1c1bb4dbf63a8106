/* Sinkbox C SDK: helpers over the wit-bindgen bindings in bindings/
 * (contract sinkbox:sink@0.2.0, wit/).
 *
 * A C sink implements the seven exports declared in bindings/sink_world.h
 * (exports_sinkbox_sink_sink_config_schema, _open, _add, _flush, _status,
 * _abort, _close). This header adds what the raw bindings lack:
 *
 *   - sinkbox_context_view: the context open receives, with C strings;
 *   - sinkbox_records_*: decode the packed batch (wit/types.wit) into record
 *     views that point into the batch buffer (no copies);
 *   - sinkbox_snapshot_set: the snapshot flush hands the runtime;
 *   - sinkbox_status_custom: a named counter in what status reports;
 *   - sinkbox_fatal / sinkbox_retryable / sinkbox_backpressure /
 *     sinkbox_rejected: fill the error out-parameter;
 *   - sinkbox_log: log to the host;
 *   - sinkbox_json_valid: check that bytes are one JSON value (RFC 8259).
 *
 * Header-only; include it in exactly the files that need it.
 */
#ifndef SINKBOX_SDK_H
#define SINKBOX_SDK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sink_world.h"

typedef exports_sinkbox_sink_sink_sink_error_t sinkbox_error_t;
typedef exports_sinkbox_sink_sink_batch_t sinkbox_batch_t;
typedef exports_sinkbox_sink_sink_sink_status_t sinkbox_status_t;
/* What flush hands back to the runtime; set it with sinkbox_snapshot_set. */
typedef sink_world_option_list_u8_t sinkbox_snapshot_t;

/* The largest snapshot the runtime keeps (wit/sink.wit). */
#define SINKBOX_SNAPSHOT_MAX (64u << 10)

/* What an instance serves (wit/types.wit `context`), with NUL-terminated
 * copies of its strings. */
typedef struct {
  char *pipeline;
  char *sink;
  char *topic; /* empty when not known yet: the first batch names it */
  uint32_t partition;
  uint32_t lane, lanes; /* 0 <= lane < lanes */
  uint32_t worker_index, worker_count;
  bool has_snapshot; /* the snapshot of the last committed flush */
  const uint8_t *snapshot;
  size_t snapshot_len;
  bool probe; /* a probe instance: make nothing durable or visible */
} sinkbox_context_t;

static inline char *sinkbox__cstr(const sink_world_string_t *s) {
  char *c = malloc(s->len + 1);
  if (!c) abort();
  if (s->len) memcpy(c, s->ptr, s->len);
  c[s->len] = 0;
  return c;
}

/* A view of the raw context; its snapshot points into *raw. Release it with
 * sinkbox_context_release before freeing raw. */
static inline sinkbox_context_t sinkbox_context_view(const exports_sinkbox_sink_sink_context_t *raw) {
  sinkbox_context_t c;
  c.pipeline = sinkbox__cstr(&raw->pipeline);
  c.sink = sinkbox__cstr(&raw->sink);
  c.topic = sinkbox__cstr(&raw->topic);
  c.partition = raw->partition;
  c.lane = raw->lane;
  c.lanes = raw->lanes;
  c.worker_index = raw->worker_index;
  c.worker_count = raw->worker_count;
  c.has_snapshot = raw->snapshot.is_some;
  c.snapshot = raw->snapshot.is_some ? raw->snapshot.val.ptr : NULL;
  c.snapshot_len = raw->snapshot.is_some ? raw->snapshot.val.len : 0;
  c.probe = raw->probe;
  return c;
}

static inline void sinkbox_context_release(sinkbox_context_t *c) {
  free(c->pipeline);
  free(c->sink);
  free(c->topic);
  c->pipeline = c->sink = c->topic = NULL;
}

/* Sets the snapshot flush returns to a copy of bytes (at most
 * SINKBOX_SNAPSHOT_MAX). */
static inline void sinkbox_snapshot_set(sinkbox_snapshot_t *snapshot, const void *bytes, size_t len) {
  sink_world_option_list_u8_free(snapshot);
  snapshot->is_some = true;
  snapshot->val.len = len;
  snapshot->val.ptr = NULL;
  if (len) {
    snapshot->val.ptr = malloc(len);
    if (!snapshot->val.ptr) abort();
    memcpy(snapshot->val.ptr, bytes, len);
  }
}

/* Adds a named counter (a count since the previous status) to status. */
static inline void sinkbox_status_custom(sinkbox_status_t *status, const char *name, uint64_t count) {
  sink_world_list_tuple2_string_u64_t *list = &status->custom;
  sink_world_tuple2_string_u64_t *items = realloc(list->ptr, (list->len + 1) * sizeof *items);
  if (!items) abort();
  sink_world_string_dup(&items[list->len].f0, name);
  items[list->len].f1 = count;
  list->ptr = items;
  list->len++;
}

/* One record, pointing into its batch's buffer. */
typedef struct {
  const uint8_t *topic; /* the batch's topic (not NUL-terminated) */
  size_t topic_len;
  uint32_t partition;
  uint64_t offset;
  bool has_timestamp;
  int64_t timestamp; /* ms since the Unix epoch */
  bool has_key;
  const uint8_t *key;
  size_t key_len;
  const uint8_t *value;
  size_t value_len;
  uint32_t header_count;
  const uint8_t *headers; /* header_count x (u32 len, name, u32 len, value) */
} sinkbox_record_t;

typedef struct {
  const sinkbox_batch_t *batch;
  const uint8_t *data;
  size_t len;
  size_t pos;
  uint32_t left;
} sinkbox_records_t;

static inline uint32_t sinkbox__u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sinkbox__u64(const uint8_t *p) {
  return (uint64_t)sinkbox__u32(p) | (uint64_t)sinkbox__u32(p + 4) << 32;
}

static inline sinkbox_records_t sinkbox_records(const sinkbox_batch_t *batch) {
  sinkbox_records_t it = {batch, batch->data.ptr, batch->data.len, 0, batch->count};
  return it;
}

/* Decodes the next record into *out. Returns 1 on success, 0 at the end,
 * -1 if the buffer is malformed. */
static inline int sinkbox_records_next(sinkbox_records_t *it, sinkbox_record_t *out) {
  if (it->left == 0) return 0;
  if (it->len - it->pos < 28) return -1;
  const uint8_t *p = it->data + it->pos;
  out->topic = it->batch->topic.ptr;
  out->topic_len = it->batch->topic.len;
  out->partition = it->batch->partition;
  out->offset = sinkbox__u64(p);
  int64_t ts = (int64_t)sinkbox__u64(p + 8);
  out->has_timestamp = ts != INT64_MIN;
  out->timestamp = ts;
  uint32_t key_len = sinkbox__u32(p + 16);
  uint32_t value_len = sinkbox__u32(p + 20);
  out->header_count = sinkbox__u32(p + 24);
  size_t at = it->pos + 28;
  out->has_key = key_len != 0xFFFFFFFFu;
  out->key = NULL;
  out->key_len = 0;
  if (out->has_key) {
    if (it->len - at < key_len) return -1;
    out->key = it->data + at;
    out->key_len = key_len;
    at += key_len;
  }
  if (it->len - at < value_len) return -1;
  out->value = it->data + at;
  out->value_len = value_len;
  at += value_len;
  out->headers = it->data + at;
  for (uint32_t h = 0; h < out->header_count * 2; h++) {
    if (it->len - at < 4) return -1;
    uint32_t n = sinkbox__u32(it->data + at);
    if (it->len - at - 4 < n) return -1;
    at += 4 + n;
  }
  it->pos = at;
  it->left--;
  return 1;
}

static inline void sinkbox__string(sink_world_string_t *s, const char *text) {
  sink_world_string_dup(s, text);
}

/* The instance is broken: the runtime replaces it and replays. */
static inline bool sinkbox_fatal(sinkbox_error_t *err, const char *message) {
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_FATAL;
  sinkbox__string(&err->val.fatal, message);
  return false;
}

/* A transient failure: the runtime drops the instance, waits with backoff,
 * opens a fresh one and replays. */
static inline bool sinkbox_retryable(sinkbox_error_t *err, const char *message) {
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_RETRYABLE;
  sinkbox__string(&err->val.retryable, message);
  return false;
}

/* The destination is overloaded: the runtime aborts, waits, replays. */
static inline bool sinkbox_backpressure(sinkbox_error_t *err, uint32_t retry_after_ms) {
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_BACKPRESSURE;
  err->val.backpressure = retry_after_ms;
  return false;
}

/* A growable list of rejections; hand it to sinkbox_rejected. */
typedef struct {
  sinkbox_sink_types_rejection_t *items;
  size_t len, cap;
} sinkbox_rejections_t;

static inline void sinkbox_reject(sinkbox_rejections_t *list, uint64_t offset, const char *reason) {
  if (list->len == list->cap) {
    list->cap = list->cap ? list->cap * 2 : 8;
    list->items = realloc(list->items, list->cap * sizeof *list->items);
    if (!list->items) abort();
  }
  list->items[list->len].offset = offset;
  sinkbox__string(&list->items[list->len].reason, reason);
  list->len++;
}

/* These records can never be written; the rest of the call counts as done.
 * Takes ownership of the list. Returns false when the list is empty (no
 * error to report), so `return !sinkbox_rejected(...)` reads naturally. */
static inline bool sinkbox_rejected(sinkbox_error_t *err, sinkbox_rejections_t *list) {
  if (list->len == 0) return false;
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_REJECTED;
  err->val.rejected.ptr = list->items;
  err->val.rejected.len = list->len;
  list->items = NULL;
  list->len = list->cap = 0;
  return true;
}

/* Logs to the host, attributed to this sink. */
static inline void sinkbox_log(sinkbox_sink_types_level_t level, const char *message) {
  sink_world_string_t text = {(uint8_t *)message, strlen(message)};
  sink_world_list_tuple2_string_string_t fields = {NULL, 0};
  sinkbox_sink_host_log(level, &text, &fields);
}

/* --- a small validating JSON scanner ------------------------------------ */

typedef struct {
  const uint8_t *s;
  size_t len, i;
} sinkbox__json;

static inline void sinkbox__ws(sinkbox__json *j) {
  while (j->i < j->len && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r')) j->i++;
}

static inline bool sinkbox__lit(sinkbox__json *j, const char *word) {
  size_t n = strlen(word);
  if (j->len - j->i < n || memcmp(j->s + j->i, word, n) != 0) return false;
  j->i += n;
  return true;
}

static inline bool sinkbox__digits(sinkbox__json *j) {
  size_t start = j->i;
  while (j->i < j->len && j->s[j->i] >= '0' && j->s[j->i] <= '9') j->i++;
  return j->i > start;
}

static inline bool sinkbox__string_body(sinkbox__json *j) {
  j->i++; /* opening quote */
  while (j->i < j->len) {
    uint8_t c = j->s[j->i];
    if (c == '"') {
      j->i++;
      return true;
    }
    if (c < 0x20) return false;
    if (c == '\\') {
      if (++j->i >= j->len) return false;
      c = j->s[j->i];
      if (c == 'u') {
        if (j->len - j->i < 5) return false;
        for (int k = 1; k <= 4; k++) {
          uint8_t h = j->s[j->i + k];
          if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) return false;
        }
        j->i += 5;
        continue;
      }
      if (!strchr("\"\\/bfnrt", c)) return false;
    }
    j->i++;
  }
  return false;
}

static inline bool sinkbox__value(sinkbox__json *j, int depth) {
  if (depth > 128 || j->i >= j->len) return false;
  uint8_t c = j->s[j->i];
  if (c == '"') return sinkbox__string_body(j);
  if (c == 't') return sinkbox__lit(j, "true");
  if (c == 'f') return sinkbox__lit(j, "false");
  if (c == 'n') return sinkbox__lit(j, "null");
  if (c == '-' || (c >= '0' && c <= '9')) {
    if (c == '-') j->i++;
    if (j->i < j->len && j->s[j->i] == '0') j->i++;
    else if (!sinkbox__digits(j)) return false;
    if (j->i < j->len && j->s[j->i] == '.') {
      j->i++;
      if (!sinkbox__digits(j)) return false;
    }
    if (j->i < j->len && (j->s[j->i] == 'e' || j->s[j->i] == 'E')) {
      j->i++;
      if (j->i < j->len && (j->s[j->i] == '+' || j->s[j->i] == '-')) j->i++;
      if (!sinkbox__digits(j)) return false;
    }
    return true;
  }
  if (c == '{' || c == '[') {
    uint8_t close = c == '{' ? '}' : ']';
    j->i++;
    sinkbox__ws(j);
    if (j->i < j->len && j->s[j->i] == close) {
      j->i++;
      return true;
    }
    for (;;) {
      if (c == '{') {
        if (j->i >= j->len || j->s[j->i] != '"' || !sinkbox__string_body(j)) return false;
        sinkbox__ws(j);
        if (j->i >= j->len || j->s[j->i] != ':') return false;
        j->i++;
        sinkbox__ws(j);
      }
      if (!sinkbox__value(j, depth + 1)) return false;
      sinkbox__ws(j);
      if (j->i >= j->len) return false;
      if (j->s[j->i] == ',') {
        j->i++;
        sinkbox__ws(j);
        continue;
      }
      if (j->s[j->i] == close) {
        j->i++;
        return true;
      }
      return false;
    }
  }
  return false;
}

/* Whether bytes hold exactly one JSON value (surrounding whitespace allowed). */
static inline bool sinkbox_json_valid(const uint8_t *bytes, size_t len) {
  sinkbox__json j = {bytes, len, 0};
  sinkbox__ws(&j);
  if (!sinkbox__value(&j, 0)) return false;
  sinkbox__ws(&j);
  return j.i == j.len;
}

/* --- SINKBOX_EXPORT: a sink as plain C callbacks -------------------------- */

/* A JSON document handed to a callback: the config in open. `what` names it
 * in error messages ("config"). Valid only during the call. */
typedef struct {
  const uint8_t *text;
  size_t len;
  const char *what;
} sinkbox_json_t;

/* A sink's callbacks. open, add, flush and abort are required; the others
 * may be left out. Every callback that returns bool returns true on
 * success, or fills *err (sinkbox_fatal, sinkbox_rejected, ...) and returns
 * false. Arguments are valid only during the call and freed by the SDK. */
typedef struct {
  /* The JSON Schema of the config, or NULL for none. */
  const char *config_schema;
  /* config: a JSON object (the SDK refused anything else with `fatal`);
   * context: what this instance serves, with its last committed snapshot.
   * A probe instance (context->probe) must make nothing durable or visible. */
  bool (*open)(const sinkbox_json_t *config, const sinkbox_context_t *context, sinkbox_error_t *err);
  /* Take a batch; decode it with sinkbox_records. */
  bool (*add)(const sinkbox_batch_t *batch, sinkbox_error_t *err);
  /* Make everything added since the last flush durable; optionally set the
   * snapshot the runtime hands to a later open (at most 64 KiB). */
  bool (*flush)(sinkbox_snapshot_t *snapshot, sinkbox_error_t *err);
  /* Fill counts since the previous call and return true, or return false
   * for none. NULL: the sink reports none. */
  bool (*status)(sinkbox_status_t *status);
  /* Drop everything added since the last successful flush. */
  void (*abort)(void);
  /* Release resources. NULL: nothing to release. */
  bool (*close)(sinkbox_error_t *err);
} sinkbox_sink_t;

static inline bool sinkbox__export_config_schema(const sinkbox_sink_t *s, sink_world_string_t *ret) {
  if (!s->config_schema) return false;
  sink_world_string_dup(ret, s->config_schema);
  return true;
}

static inline bool sinkbox__export_open(const sinkbox_sink_t *s, sink_world_string_t *config,
                                        exports_sinkbox_sink_sink_context_t *raw, sinkbox_error_t *err) {
  sinkbox_json_t doc = {config->ptr, config->len, "config"};
  sinkbox_context_t context = sinkbox_context_view(raw);
  bool ok;
  if (!s->open || !s->add || !s->flush || !s->abort)
    ok = sinkbox_fatal(err, "the sink's SINKBOX_EXPORT lacks one of open, add, flush, abort");
  else if (!sinkbox_json_valid(config->ptr, config->len))
    ok = sinkbox_fatal(err, "config is not JSON");
  else
    ok = s->open(&doc, &context, err);
  sinkbox_context_release(&context);
  sink_world_string_free(config);
  exports_sinkbox_sink_sink_context_free(raw);
  return ok;
}

static inline bool sinkbox__export_add(const sinkbox_sink_t *s, sinkbox_batch_t *batch, sinkbox_error_t *err) {
  bool ok = s->add(batch, err);
  exports_sinkbox_sink_sink_batch_free(batch);
  return ok;
}

static inline bool sinkbox__export_flush(const sinkbox_sink_t *s, sinkbox_snapshot_t *ret, sinkbox_error_t *err) {
  ret->is_some = false;
  ret->val.ptr = NULL;
  ret->val.len = 0;
  bool ok = s->flush(ret, err);
  if (ok && ret->is_some && ret->val.len > SINKBOX_SNAPSHOT_MAX)
    ok = sinkbox_fatal(err, "flush returned a snapshot larger than 64 KiB");
  if (!ok) {
    sink_world_option_list_u8_free(ret);
    ret->is_some = false;
  }
  return ok;
}

static inline bool sinkbox__export_status(const sinkbox_sink_t *s, sinkbox_status_t *ret) {
  memset(ret, 0, sizeof *ret);
  return s->status && s->status(ret);
}

static inline bool sinkbox__export_close(const sinkbox_sink_t *s, sinkbox_error_t *err) {
  return !s->close || s->close(err);
}

/* Defines the sink's exports from its callbacks, given as designated
 * initializers of sinkbox_sink_t; use it once, at file scope:
 *
 *   SINKBOX_EXPORT(.open = my_open, .add = my_add, .flush = my_flush, .abort = my_abort);
 *
 * The SDK frees what the runtime passes in (config, context, batch), checks
 * that the config is JSON before open, and checks the snapshot's size. */
#define SINKBOX_EXPORT(...)                                                                                   \
  static const sinkbox_sink_t sinkbox__sink = {__VA_ARGS__};                                                  \
  bool exports_sinkbox_sink_sink_config_schema(sink_world_string_t *ret) {                                    \
    return sinkbox__export_config_schema(&sinkbox__sink, ret);                                                \
  }                                                                                                           \
  bool exports_sinkbox_sink_sink_open(sink_world_string_t *config, exports_sinkbox_sink_sink_context_t *context, \
                                      sinkbox_error_t *err) {                                                 \
    return sinkbox__export_open(&sinkbox__sink, config, context, err);                                        \
  }                                                                                                           \
  bool exports_sinkbox_sink_sink_add(sinkbox_batch_t *batch, sinkbox_error_t *err) {                          \
    return sinkbox__export_add(&sinkbox__sink, batch, err);                                                   \
  }                                                                                                           \
  bool exports_sinkbox_sink_sink_flush(sinkbox_snapshot_t *ret, sinkbox_error_t *err) {                       \
    return sinkbox__export_flush(&sinkbox__sink, ret, err);                                                   \
  }                                                                                                           \
  bool exports_sinkbox_sink_sink_status(sinkbox_status_t *ret) { return sinkbox__export_status(&sinkbox__sink, ret); } \
  void exports_sinkbox_sink_sink_abort(void) { sinkbox__sink.abort(); }                                       \
  bool exports_sinkbox_sink_sink_close(sinkbox_error_t *err) { return sinkbox__export_close(&sinkbox__sink, err); } \
  typedef int sinkbox__exported_t

#endif
