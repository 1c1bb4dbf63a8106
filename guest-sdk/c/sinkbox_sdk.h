/* Sinkbox C SDK (contract sinkbox:sink@0.2.0, wit/): helpers over the
 * wit-bindgen bindings in bindings/.
 *
 * A sink is a set of plain C callbacks handed to SINKBOX_EXPORT, which
 * defines the seven component exports, frees what the runtime passes in and
 * checks the config before `open`. Beside it:
 *
 *   - sinkbox_records / sinkbox_records_next: the packed batch
 *     (wit/types.wit) as record views into the batch buffer (no copies);
 *   - sinkbox_json_*: a bounded JSON reader for the config's top-level keys
 *     (and the sink's own snapshot), with error messages that name the key;
 *   - sinkbox_fatal / sinkbox_retryable / sinkbox_backpressure /
 *     sinkbox_reject + sinkbox_rejected: fill the error out-parameter;
 *   - sinkbox_snapshot_set, sinkbox_status_custom: what flush and status
 *     hand back;
 *   - sinkbox_output_*: an output file written exactly once through the
 *     runtime's snapshots (the pattern of wit/sink.wit for file sinks);
 *   - sinkbox_buf_*: a growable byte buffer;
 *   - sinkbox_log: log to the host.
 *
 * Header-only: include it in the one file that uses SINKBOX_EXPORT.
 */
#ifndef SINKBOX_SDK_H
#define SINKBOX_SDK_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sink_world.h"

typedef exports_sinkbox_sink_sink_sink_error_t sinkbox_error_t;
typedef exports_sinkbox_sink_sink_batch_t sinkbox_batch_t;
typedef exports_sinkbox_sink_sink_sink_status_t sinkbox_status_t;
/* What flush hands back; none unless set with sinkbox_snapshot_set. */
typedef sink_world_option_list_u8_t sinkbox_snapshot_t;

/* The largest snapshot the runtime keeps (wit/sink.wit). */
#define SINKBOX_SNAPSHOT_MAX (64u << 10)

#if defined(__GNUC__) || defined(__clang__)
#define SINKBOX__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SINKBOX__PRINTF(f, a)
#endif

/* --- errors ------------------------------------------------------------- */

/* A heap copy of the formatted text, never cut. */
static inline char *sinkbox__vformat(size_t *len, const char *format, va_list ap) {
  va_list again;
  va_copy(again, ap);
  int n = vsnprintf(NULL, 0, format, ap);
  if (n < 0) n = 0;
  char *text = malloc((size_t)n + 1);
  if (!text) abort();
  vsnprintf(text, (size_t)n + 1, format, again);
  va_end(again);
  *len = (size_t)n;
  return text;
}

/* The instance is broken: the runtime drops it, opens a fresh one and
 * replays the checkpoint; from open, it stops the pipeline. */
static inline bool sinkbox_fatal(sinkbox_error_t *err, const char *message) {
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_FATAL;
  sink_world_string_dup(&err->val.fatal, message);
  return false;
}

/* sinkbox_fatal with a printf-style message. */
SINKBOX__PRINTF(2, 3) static inline bool sinkbox_fatalf(sinkbox_error_t *err, const char *format, ...) {
  va_list ap;
  va_start(ap, format);
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_FATAL;
  err->val.fatal.ptr = (uint8_t *)sinkbox__vformat(&err->val.fatal.len, format, ap);
  va_end(ap);
  return false;
}

/* A transient failure (timeout, lost connection): the runtime drops the
 * instance, waits with backoff, opens a fresh one and replays. */
static inline bool sinkbox_retryable(sinkbox_error_t *err, const char *message) {
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_RETRYABLE;
  sink_world_string_dup(&err->val.retryable, message);
  return false;
}

/* sinkbox_retryable with a printf-style message. */
SINKBOX__PRINTF(2, 3) static inline bool sinkbox_retryablef(sinkbox_error_t *err, const char *format, ...) {
  va_list ap;
  va_start(ap, format);
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_RETRYABLE;
  err->val.retryable.ptr = (uint8_t *)sinkbox__vformat(&err->val.retryable.len, format, ap);
  va_end(ap);
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
  sink_world_string_dup(&list->items[list->len].reason, reason);
  list->len++;
}

static inline void sinkbox_rejections_free(sinkbox_rejections_t *list) {
  for (size_t k = 0; k < list->len; k++) sink_world_string_free(&list->items[k].reason);
  free(list->items);
  list->items = NULL;
  list->len = list->cap = 0;
}

/* These records can never be written: they go to the dead-letter queue and
 * the rest of the call counts as done. Takes ownership of the list. Returns
 * false when the list is empty (no error to report), so
 * `if (sinkbox_rejected(err, &list)) return false;` reads naturally. */
static inline bool sinkbox_rejected(sinkbox_error_t *err, sinkbox_rejections_t *list) {
  if (list->len == 0) return false;
  err->tag = SINKBOX_SINK_TYPES_SINK_ERROR_REJECTED;
  err->val.rejected.ptr = list->items;
  err->val.rejected.len = list->len;
  list->items = NULL;
  list->len = list->cap = 0;
  return true;
}

/* --- host log ----------------------------------------------------------- */

/* Logs to the host, attributed to this sink. */
static inline void sinkbox_log(sinkbox_sink_types_level_t level, const char *message) {
  sink_world_string_t text = {(uint8_t *)message, strlen(message)};
  sink_world_list_tuple2_string_string_t fields = {NULL, 0};
  sinkbox_sink_host_log(level, &text, &fields);
}

/* --- records ------------------------------------------------------------ */

/* One record, pointing into its batch's buffer. */
typedef struct {
  const uint8_t *topic; /* the batch's topic, topic_len bytes (no NUL) */
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
  sinkbox_records_t it = {batch, 0, batch->count};
  return it;
}

/* Decodes the next record into *out. Returns 1 on success, 0 at the end,
 * -1 if the buffer is malformed (report it with sinkbox_fatal). */
static inline int sinkbox_records_next(sinkbox_records_t *it, sinkbox_record_t *out) {
  if (it->left == 0) return 0;
  const uint8_t *data = it->batch->data.ptr;
  size_t len = it->batch->data.len;
  if (len - it->pos < 28) return -1;
  const uint8_t *p = data + it->pos;
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
    if (len - at < key_len) return -1;
    out->key = data + at;
    out->key_len = key_len;
    at += key_len;
  }
  if (len - at < value_len) return -1;
  out->value = data + at;
  out->value_len = value_len;
  at += value_len;
  out->headers = data + at;
  for (uint64_t h = 0; h < (uint64_t)out->header_count * 2; h++) {
    if (len - at < 4) return -1;
    uint32_t n = sinkbox__u32(data + at);
    if (len - at - 4 < n) return -1;
    at += 4 + n;
  }
  it->pos = at;
  it->left--;
  return 1;
}

/* The header a source sets on a record whose value was null (a Kafka
 * tombstone); the record's value is then empty. */
#define SINKBOX_TOMBSTONE_HEADER "sinkbox.tombstone"

/* The value of the first header called `name` (NUL-terminated) in *value and
 * *value_len; returns false if the record has no such header. The headers
 * were bounds-checked by sinkbox_records_next. */
static inline bool sinkbox_record_header(const sinkbox_record_t *r, const char *name, const uint8_t **value,
                                         size_t *value_len) {
  size_t name_len = strlen(name);
  const uint8_t *p = r->headers;
  for (uint32_t h = 0; h < r->header_count; h++) {
    uint32_t n = sinkbox__u32(p);
    const uint8_t *header_name = p + 4;
    uint32_t v = sinkbox__u32(p + 4 + n);
    const uint8_t *header_value = p + 8 + n;
    if (n == name_len && memcmp(header_name, name, n) == 0) {
      *value = header_value;
      *value_len = v;
      return true;
    }
    p += 8 + (size_t)n + v;
  }
  return false;
}

/* Whether the record is a tombstone: its source record had no value. */
static inline bool sinkbox_record_is_tombstone(const sinkbox_record_t *r) {
  const uint8_t *value;
  size_t len;
  return sinkbox_record_header(r, SINKBOX_TOMBSTONE_HEADER, &value, &len);
}

/* --- what flush and status hand back ------------------------------------ */

/* Sets the snapshot flush returns to a copy of bytes (at most
 * SINKBOX_SNAPSHOT_MAX; SINKBOX_EXPORT turns a larger one into `fatal`). */
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

/* --- a growable byte buffer --------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap;
} sinkbox_buf_t;

static inline void sinkbox_buf_append(sinkbox_buf_t *b, const void *bytes, size_t n) {
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) abort();
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, bytes, n);
  b->len += n;
}

static inline void sinkbox_buf_free(sinkbox_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* --- JSON: a validating scanner ----------------------------------------- */

typedef struct {
  const uint8_t *s;
  size_t len, i;
  const char *why; /* what went wrong where the scan stopped */
} sinkbox__json;

static inline bool sinkbox__json_fail(sinkbox__json *j, const char *why) {
  if (!j->why) j->why = why;
  return false;
}

static inline void sinkbox__ws(sinkbox__json *j) {
  while (j->i < j->len && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' || j->s[j->i] == '\r')) j->i++;
}

static inline bool sinkbox__lit(sinkbox__json *j, const char *word) {
  size_t n = strlen(word);
  if (j->len - j->i < n || memcmp(j->s + j->i, word, n) != 0) return sinkbox__json_fail(j, "expected a value");
  j->i += n;
  return true;
}

static inline bool sinkbox__digits(sinkbox__json *j) {
  size_t start = j->i;
  while (j->i < j->len && j->s[j->i] >= '0' && j->s[j->i] <= '9') j->i++;
  return j->i > start || sinkbox__json_fail(j, "expected a digit");
}

static inline bool sinkbox__is_hex(uint8_t h) {
  return (h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F');
}

static inline bool sinkbox__string_body(sinkbox__json *j) {
  j->i++; /* opening quote */
  while (j->i < j->len) {
    uint8_t c = j->s[j->i];
    if (c == '"') {
      j->i++;
      return true;
    }
    if (c < 0x20) return sinkbox__json_fail(j, "control character in a string (escape it)");
    if (c == '\\') {
      if (++j->i >= j->len) break;
      c = j->s[j->i];
      if (c == 'u') {
        if (j->len - j->i < 5) break;
        for (int k = 1; k <= 4; k++)
          if (!sinkbox__is_hex(j->s[j->i + k])) return sinkbox__json_fail(j, "invalid \\u escape in a string");
        j->i += 5;
        continue;
      }
      if (!strchr("\"\\/bfnrt", c) || c == 0) return sinkbox__json_fail(j, "invalid escape in a string");
    }
    j->i++;
  }
  return sinkbox__json_fail(j, "unterminated string");
}

static inline bool sinkbox__value(sinkbox__json *j, int depth) {
  if (depth > 128) return sinkbox__json_fail(j, "nested deeper than 128 levels");
  if (j->i >= j->len) return sinkbox__json_fail(j, "unexpected end, expected a value");
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
  if (c != '{' && c != '[') return sinkbox__json_fail(j, "expected a value");
  uint8_t close = c == '{' ? '}' : ']';
  j->i++;
  sinkbox__ws(j);
  if (j->i < j->len && j->s[j->i] == close) {
    j->i++;
    return true;
  }
  for (;;) {
    if (c == '{') {
      if (j->i >= j->len || j->s[j->i] != '"') return sinkbox__json_fail(j, "expected a string key");
      if (!sinkbox__string_body(j)) return false;
      sinkbox__ws(j);
      if (j->i >= j->len || j->s[j->i] != ':') return sinkbox__json_fail(j, "expected ':' after the key");
      j->i++;
      sinkbox__ws(j);
    }
    if (!sinkbox__value(j, depth + 1)) return false;
    sinkbox__ws(j);
    if (j->i < j->len && j->s[j->i] == ',') {
      j->i++;
      sinkbox__ws(j);
      continue;
    }
    if (j->i < j->len && j->s[j->i] == close) {
      j->i++;
      return true;
    }
    return sinkbox__json_fail(j, c == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
  }
}

/* Whether bytes hold exactly one JSON value (surrounding whitespace allowed). */
static inline bool sinkbox_json_valid(const uint8_t *bytes, size_t len) {
  sinkbox__json j = {bytes, len, 0, NULL};
  sinkbox__ws(&j);
  if (!sinkbox__value(&j, 0)) return false;
  sinkbox__ws(&j);
  return j.i == j.len;
}

/* --- JSON: reading top-level keys (the config accessor) ----------------- *
 *
 * A document is one JSON object, checked once by sinkbox_json_parse (the
 * config handed to open already is). Each getter reads one top-level key:
 *
 *   - present with the right type: sets *out, returns true;
 *   - absent or null, and SINKBOX_OPTIONAL: returns true; scalars keep the
 *     value *out had (your default), strings and lists are set to empty
 *     (NULL, {NULL, 0});
 *   - otherwise: fills err with `fatal` naming the document and the key
 *     ("config needs \"path\" (a string)", "config \"size\" must be an
 *     integer, not a string", "config has the key \"path\" twice") and
 *     returns false.
 *
 * Strings come back as NUL-terminated heap copies (free them), escapes
 * decoded, of any length. Every call scans the document once; the scan is
 * bounded by its length and a nesting depth of 128. */

#define SINKBOX_REQUIRED true
#define SINKBOX_OPTIONAL false

typedef struct {
  const uint8_t *text;
  size_t len;
  const char *what; /* names the document in messages: "config" */
} sinkbox_json_t;

/* A list of NUL-terminated heap strings; free it with sinkbox_strings_free. */
typedef struct {
  char **items;
  size_t len;
} sinkbox_strings_t;

static inline void sinkbox_strings_free(sinkbox_strings_t *list) {
  for (size_t k = 0; k < list->len; k++) free(list->items[k]);
  free(list->items);
  list->items = NULL;
  list->len = 0;
}

static inline const char *sinkbox__json_kind(uint8_t c) {
  switch (c) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 't':
    case 'f': return "a boolean";
    case 'n': return "null";
    default: return "a number";
  }
}

/* Checks that bytes hold one JSON object and points doc at them (no copy:
 * bytes must outlive doc). `what` names the document in error messages. */
static inline bool sinkbox_json_parse(sinkbox_json_t *doc, const char *what, const void *bytes, size_t len,
                                      sinkbox_error_t *err) {
  sinkbox__json j = {bytes, len, 0, NULL};
  doc->text = bytes;
  doc->len = len;
  doc->what = what;
  sinkbox__ws(&j);
  if (j.i == j.len) return sinkbox_fatalf(err, "%s is empty; expected a JSON object", what);
  size_t start = j.i;
  bool ok = sinkbox__value(&j, 0);
  if (ok) {
    sinkbox__ws(&j);
    if (j.i != j.len) ok = sinkbox__json_fail(&j, "unexpected text after the value");
  }
  if (!ok) return sinkbox_fatalf(err, "%s is not valid JSON: %s at byte %zu", what, j.why, j.i);
  if (j.s[start] != '{') return sinkbox_fatalf(err, "%s must be a JSON object, not %s", what, sinkbox__json_kind(j.s[start]));
  return true;
}

static inline unsigned sinkbox__hex4(const uint8_t *p) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    uint8_t h = p[k];
    v = v << 4 | (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
  }
  return v;
}

/* Decodes the body of a valid JSON string (raw, n bytes, between the quotes)
 * into out, which has room for n bytes (decoding never grows). Returns the
 * decoded length, or sets *why on an unpaired UTF-16 surrogate. */
static inline size_t sinkbox__unescape(const uint8_t *raw, size_t n, uint8_t *out, const char **why) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    uint8_t c = raw[i];
    if (c != '\\') {
      out[o++] = c;
      i++;
      continue;
    }
    c = raw[i + 1];
    i += 2;
    switch (c) {
      case 'b': out[o++] = '\b'; continue;
      case 'f': out[o++] = '\f'; continue;
      case 'n': out[o++] = '\n'; continue;
      case 'r': out[o++] = '\r'; continue;
      case 't': out[o++] = '\t'; continue;
      case 'u': break;
      default: out[o++] = c; continue; /* " \ / */
    }
    uint32_t cp = sinkbox__hex4(raw + i);
    i += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      unsigned low = n - i >= 6 && raw[i] == '\\' && raw[i + 1] == 'u' ? sinkbox__hex4(raw + i + 2) : 0;
      if (low < 0xDC00 || low > 0xDFFF) {
        *why = "an unpaired UTF-16 surrogate";
        return 0;
      }
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
      i += 6;
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      *why = "an unpaired UTF-16 surrogate";
      return 0;
    }
    if (cp < 0x80) {
      out[o++] = (uint8_t)cp;
    } else if (cp < 0x800) {
      out[o++] = (uint8_t)(0xC0 | cp >> 6);
      out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out[o++] = (uint8_t)(0xE0 | cp >> 12);
      out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
      out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
    } else {
      out[o++] = (uint8_t)(0xF0 | cp >> 18);
      out[o++] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
      out[o++] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
      out[o++] = (uint8_t)(0x80 | (cp & 0x3F));
    }
  }
  return o;
}

static inline bool sinkbox__key_is(const uint8_t *raw, size_t n, const char *key, size_t key_len) {
  if (!memchr(raw, '\\', n)) return n == key_len && memcmp(raw, key, n) == 0;
  uint8_t *decoded = malloc(n);
  if (!decoded) abort();
  const char *why = NULL;
  size_t m = sinkbox__unescape(raw, n, decoded, &why);
  bool same = !why && m == key_len && memcmp(decoded, key, m) == 0;
  free(decoded);
  return same;
}

/* Finds KEY's value among doc's top-level members: 1 (at set), 0 absent,
 * -1 if the key is there twice (err filled). */
static inline int sinkbox__json_find(const sinkbox_json_t *doc, const char *key, size_t *at, sinkbox_error_t *err) {
  sinkbox__json j = {doc->text, doc->len, 0, NULL};
  size_t key_len = strlen(key);
  int found = 0;
  sinkbox__ws(&j);
  if (j.i >= j.len || j.s[j.i] != '{') return 0;
  j.i++;
  sinkbox__ws(&j);
  while (j.i < j.len && j.s[j.i] == '"') {
    size_t name = j.i + 1;
    if (!sinkbox__string_body(&j)) return 0;
    bool match = sinkbox__key_is(j.s + name, j.i - 1 - name, key, key_len);
    sinkbox__ws(&j);
    j.i++; /* ':' */
    sinkbox__ws(&j);
    if (match) {
      if (found) {
        sinkbox_fatalf(err, "%s has the key \"%s\" twice", doc->what, key);
        return -1;
      }
      found = 1;
      *at = j.i;
    }
    if (!sinkbox__value(&j, 0)) return 0;
    sinkbox__ws(&j);
    if (j.i >= j.len || j.s[j.i] != ',') break;
    j.i++;
    sinkbox__ws(&j);
  }
  return found;
}

/* 1: KEY holds a value at *at; 0: absent or null and optional; -1: err filled. */
static inline int sinkbox__json_get(const sinkbox_json_t *doc, const char *key, bool required, const char *want,
                                    size_t *at, sinkbox_error_t *err) {
  int found = sinkbox__json_find(doc, key, at, err);
  if (found < 0) return -1;
  if (found && doc->text[*at] != 'n') return 1;
  if (!required) return 0;
  sinkbox_fatalf(err, "%s needs \"%s\" (%s)", doc->what, key, want);
  return -1;
}

static inline bool sinkbox__json_wrong(const sinkbox_json_t *doc, const char *key, const char *want, size_t at,
                                       sinkbox_error_t *err) {
  return sinkbox_fatalf(err, "%s \"%s\" must be %s, not %s", doc->what, key, want, sinkbox__json_kind(doc->text[at]));
}

/* The end of the value that starts at `at` (a valid document). */
static inline size_t sinkbox__json_end(const sinkbox_json_t *doc, size_t at) {
  sinkbox__json j = {doc->text, doc->len, at, NULL};
  sinkbox__value(&j, 0);
  return j.i;
}

/* The string at `at` as a heap C string; `name` and `index` name it in
 * messages (index < 0: not in a list). */
static inline bool sinkbox__json_cstr(const sinkbox_json_t *doc, const char *name, long index, size_t at, char **out,
                                      sinkbox_error_t *err) {
  size_t end = sinkbox__json_end(doc, at);
  size_t n = end - at - 2;
  char *text = malloc(n + 1);
  if (!text) abort();
  const char *why = NULL;
  size_t m = sinkbox__unescape(doc->text + at + 1, n, (uint8_t *)text, &why);
  if (!why && memchr(text, 0, m)) why = "a NUL character (\\u0000), which a C string cannot carry";
  if (why) {
    free(text);
    if (index < 0) return sinkbox_fatalf(err, "%s \"%s\" holds %s", doc->what, name, why);
    return sinkbox_fatalf(err, "%s \"%s\"[%ld] holds %s", doc->what, name, index, why);
  }
  text[m] = 0;
  *out = text;
  return true;
}

/* A string; *out is a heap copy (NULL when absent and optional). */
static inline bool sinkbox_json_string(const sinkbox_json_t *doc, const char *key, bool required, char **out,
                                       sinkbox_error_t *err) {
  size_t at;
  *out = NULL;
  int got = sinkbox__json_get(doc, key, required, "a string", &at, err);
  if (got <= 0) return got == 0;
  if (doc->text[at] != '"') return sinkbox__json_wrong(doc, key, "a string", at, err);
  return sinkbox__json_cstr(doc, key, -1, at, out, err);
}

/* A boolean. */
static inline bool sinkbox_json_bool(const sinkbox_json_t *doc, const char *key, bool required, bool *out,
                                     sinkbox_error_t *err) {
  size_t at;
  int got = sinkbox__json_get(doc, key, required, "true or false", &at, err);
  if (got <= 0) return got == 0;
  if (doc->text[at] != 't' && doc->text[at] != 'f') return sinkbox__json_wrong(doc, key, "true or false", at, err);
  *out = doc->text[at] == 't';
  return true;
}

/* An integer that fits int64_t, written without fraction or exponent. */
static inline bool sinkbox_json_int(const sinkbox_json_t *doc, const char *key, bool required, int64_t *out,
                                    sinkbox_error_t *err) {
  size_t at;
  int got = sinkbox__json_get(doc, key, required, "an integer", &at, err);
  if (got <= 0) return got == 0;
  uint8_t c = doc->text[at];
  if (c != '-' && (c < '0' || c > '9')) return sinkbox__json_wrong(doc, key, "an integer", at, err);
  size_t end = sinkbox__json_end(doc, at);
  int shown = end - at > 40 ? 40 : (int)(end - at);
  bool negative = c == '-';
  uint64_t v = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  size_t i = at + negative;
  for (; i < end && doc->text[i] >= '0' && doc->text[i] <= '9'; i++) {
    unsigned d = doc->text[i] - '0';
    if (v > (limit - d) / 10)
      return sinkbox_fatalf(err, "%s \"%s\" is out of range: %.*s", doc->what, key, shown, (const char *)doc->text + at);
    v = v * 10 + d;
  }
  if (i < end)
    return sinkbox_fatalf(err, "%s \"%s\" must be an integer, not %.*s", doc->what, key, shown, (const char *)doc->text + at);
  *out = !negative ? (int64_t)v : v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  return true;
}

/* Any finite number. */
static inline bool sinkbox_json_number(const sinkbox_json_t *doc, const char *key, bool required, double *out,
                                       sinkbox_error_t *err) {
  size_t at;
  int got = sinkbox__json_get(doc, key, required, "a number", &at, err);
  if (got <= 0) return got == 0;
  uint8_t c = doc->text[at];
  if (c != '-' && (c < '0' || c > '9')) return sinkbox__json_wrong(doc, key, "a number", at, err);
  size_t n = sinkbox__json_end(doc, at) - at;
  char *token = malloc(n + 1);
  if (!token) abort();
  memcpy(token, doc->text + at, n);
  token[n] = 0;
  double v = strtod(token, NULL);
  bool finite = v - v == 0;
  if (!finite) sinkbox_fatalf(err, "%s \"%s\" is out of range: %.40s", doc->what, key, token);
  free(token);
  if (finite) *out = v;
  return finite;
}

/* An array of strings; *out holds heap copies ({NULL, 0} when absent and
 * optional). */
static inline bool sinkbox_json_strings(const sinkbox_json_t *doc, const char *key, bool required,
                                        sinkbox_strings_t *out, sinkbox_error_t *err) {
  size_t at;
  out->items = NULL;
  out->len = 0;
  int got = sinkbox__json_get(doc, key, required, "an array of strings", &at, err);
  if (got <= 0) return got == 0;
  if (doc->text[at] != '[') return sinkbox__json_wrong(doc, key, "an array of strings", at, err);
  sinkbox__json j = {doc->text, doc->len, at + 1, NULL};
  sinkbox_strings_t list = {NULL, 0};
  sinkbox__ws(&j);
  while (j.i < j.len && j.s[j.i] != ']') {
    if (j.s[j.i] != '"') {
      size_t index = list.len;
      sinkbox_strings_free(&list);
      return sinkbox_fatalf(err, "%s \"%s\"[%zu] must be a string, not %s", doc->what, key, index,
                            sinkbox__json_kind(j.s[j.i]));
    }
    char **items = realloc(list.items, (list.len + 1) * sizeof *items);
    if (!items) abort();
    list.items = items;
    if (!sinkbox__json_cstr(doc, key, (long)list.len, j.i, &list.items[list.len], err)) {
      sinkbox_strings_free(&list);
      return false;
    }
    list.len++;
    sinkbox__string_body(&j);
    sinkbox__ws(&j);
    if (j.i < j.len && j.s[j.i] == ',') j.i++;
    sinkbox__ws(&j);
  }
  *out = list;
  return true;
}

/* --- the context open receives ------------------------------------------ */

/* What an instance serves (wit/types.wit `context`), with NUL-terminated
 * copies of its strings; valid during open only. */
typedef struct {
  const char *pipeline;
  const char *sink;
  const char *topic; /* "" when not known yet: the first batch names it */
  uint32_t partition;
  uint32_t lane, lanes; /* 0 <= lane < lanes */
  uint32_t worker_index, worker_count;
  bool has_snapshot; /* the snapshot of the last committed flush */
  const uint8_t *snapshot;
  size_t snapshot_len;
  bool probe; /* a probe instance: make nothing durable or visible */
} sinkbox_context_t;

/* --- an output file, exactly once through snapshots --------------------- *
 *
 * For a sink that appends to one file: the snapshot is the file's length
 * after each flush ({"len":N}), so the runtime keeps all the state there is
 * and no state file sits beside the output.
 *
 *   - open without a snapshot (first run): creates the file, or takes an
 *     empty one (or one holding exactly `header`); refuses a file that holds
 *     anything else, since this pipeline did not write it.
 *   - open with a snapshot {"len":N}: the file must hold at least N bytes
 *     (else `fatal`: it was truncated, replaced or deleted outside sinkbox);
 *     bytes past N belong to a checkpoint that was never committed and are
 *     cut off; the runtime replays them.
 *   - open on a probe instance: fills in the path and touches nothing.
 *   - append (from flush): checks that the file by its path is still the
 *     one the sink left, of the length it left (else `fatal`), writes,
 *     syncs and sets the snapshot to the new length.
 *
 * The path may hold {partition} and {lane}, filled in from the context;
 * without them an instance refuses to open when it would share the file
 * (lanes > 1, or a partition other than 0). */

typedef struct {
  char *path;   /* the output's path, placeholders filled in */
  bool probe;   /* a probe instance: the file is never touched */
  uint64_t len; /* what the file holds: the length the sink made durable */
  uint64_t ino; /* the file's identity, to notice a replacement */
} sinkbox_output_t;

/* Frees the path; the file needs no closing (flush opens it each time). */
static inline void sinkbox_output_close(sinkbox_output_t *out) {
  free(out->path);
  memset(out, 0, sizeof *out);
}

/* 4000 -> "4,000", for messages. */
typedef struct {
  char text[32];
} sinkbox__number_t;

static inline sinkbox__number_t sinkbox__grouped(uint64_t n) {
  char digits[24];
  int len = snprintf(digits, sizeof digits, "%llu", (unsigned long long)n);
  sinkbox__number_t out;
  int o = 0;
  for (int k = 0; k < len; k++) {
    if (k > 0 && (len - k) % 3 == 0) out.text[o++] = ',';
    out.text[o++] = digits[k];
  }
  out.text[o] = 0;
  return out;
}

/* Fills {partition} and {lane} in a path from the context; *out is a heap
 * string. Refuses a path that instances would share. */
static inline bool sinkbox_output_path(const char *path, const sinkbox_context_t *context, char **out,
                                       sinkbox_error_t *err) {
  static const char *const names[2] = {"{partition}", "{lane}"};
  uint32_t values[2] = {context->partition, context->lane};
  bool has_lane = strstr(path, names[1]) != NULL, has_partition = strstr(path, names[0]) != NULL;
  if (context->lanes > 1 && !has_lane)
    return sinkbox_fatalf(err,
                          "path %s has no {lane} placeholder but the sink runs on %u lanes, which would all write "
                          "the same file",
                          path, context->lanes);
  if (context->partition != 0 && !has_partition)
    return sinkbox_fatalf(err,
                          "path %s has no {partition} placeholder but this instance serves partition %u: the "
                          "partitions would all write the same file",
                          path, context->partition);
  sinkbox_buf_t b = {NULL, 0, 0};
  for (const char *p = path; *p;) {
    int k = strncmp(p, names[0], strlen(names[0])) == 0 ? 0 : strncmp(p, names[1], strlen(names[1])) == 0 ? 1 : -1;
    if (k < 0) {
      sinkbox_buf_append(&b, p++, 1);
      continue;
    }
    char digits[12];
    int n = snprintf(digits, sizeof digits, "%u", values[k]);
    sinkbox_buf_append(&b, digits, (size_t)n);
    p += strlen(names[k]);
  }
  sinkbox_buf_append(&b, "", 1);
  *out = (char *)b.data;
  return true;
}

static inline bool sinkbox__pwrite_all(int fd, const void *bytes, size_t n, uint64_t at) {
  const uint8_t *p = bytes;
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, (off_t)at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= (size_t)w;
    at += (uint64_t)w;
  }
  return true;
}

static inline bool sinkbox__output_snapshot(const sinkbox_output_t *out, sinkbox_snapshot_t *snapshot) {
  char text[40];
  int n = snprintf(text, sizeof text, "{\"len\":%llu}", (unsigned long long)out->len);
  sinkbox_snapshot_set(snapshot, text, (size_t)n);
  return true;
}

/* Rolls the file back to the committed snapshot. */
static inline bool sinkbox__output_resume(sinkbox_output_t *out, const sinkbox_context_t *context,
                                          sinkbox_error_t *err) {
  sinkbox_json_t doc;
  int64_t committed = -1;
  if (!sinkbox_json_parse(&doc, "snapshot", context->snapshot, context->snapshot_len, err) ||
      !sinkbox_json_int(&doc, "len", SINKBOX_REQUIRED, &committed, err))
    return false;
  if (committed < 0) return sinkbox_fatalf(err, "snapshot \"len\" is negative: %lld", (long long)committed);
  const char *path = out->path;
  int fd = open(path, O_RDWR);
  if (fd < 0 && errno == ENOENT)
    return sinkbox_fatalf(err, "output %s is missing but %s bytes were committed: it was deleted or moved outside sinkbox",
                          path, sinkbox__grouped((uint64_t)committed).text);
  if (fd < 0) return sinkbox_fatalf(err, "cannot open output %s: %s", path, strerror(errno));
  struct stat st;
  memset(&st, 0, sizeof st);
  bool ok = true;
  if (fstat(fd, &st) != 0)
    ok = sinkbox_retryablef(err, "cannot stat output %s: %s", path, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    ok = sinkbox_fatalf(err, "output %s is not a regular file", path);
  else if ((uint64_t)st.st_size < (uint64_t)committed)
    ok = sinkbox_fatalf(err, "output %s is %s bytes but %s were committed: it was truncated or replaced outside sinkbox",
                        path, sinkbox__grouped((uint64_t)st.st_size).text, sinkbox__grouped((uint64_t)committed).text);
  else if ((uint64_t)st.st_size > (uint64_t)committed && (ftruncate(fd, (off_t)committed) != 0 || fsync(fd) != 0))
    ok = sinkbox_retryablef(err, "cannot cut output %s back to the committed %s bytes: %s", path,
                            sinkbox__grouped((uint64_t)committed).text, strerror(errno));
  close(fd);
  out->len = (uint64_t)committed;
  out->ino = (uint64_t)st.st_ino;
  return ok;
}

/* Starts the file on a first run. */
static inline bool sinkbox__output_start(sinkbox_output_t *out, const void *header, size_t header_len,
                                         sinkbox_error_t *err) {
  const char *path = out->path;
  int fd = open(path, O_RDWR | O_CREAT, 0644);
  if (fd < 0) return sinkbox_fatalf(err, "cannot open output %s: %s", path, strerror(errno));
  struct stat st;
  memset(&st, 0, sizeof st);
  bool ok = true;
  if (fstat(fd, &st) != 0) {
    ok = sinkbox_retryablef(err, "cannot stat output %s: %s", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    ok = sinkbox_fatalf(err, "output %s is not a regular file", path);
  } else if (st.st_size == 0) {
    if (header_len && (!sinkbox__pwrite_all(fd, header, header_len, 0) || fsync(fd) != 0))
      ok = sinkbox_retryablef(err, "cannot write output %s: %s", path, strerror(errno));
  } else {
    /* A file holding exactly the header is one an earlier first run started. */
    bool ours = header_len && (uint64_t)st.st_size == header_len;
    uint8_t *head = ours ? malloc(header_len) : NULL;
    ours = ours && head && pread(fd, head, header_len, 0) == (ssize_t)header_len && memcmp(head, header, header_len) == 0;
    free(head);
    if (!ours)
      ok = sinkbox_fatalf(err, "output %s already holds %s bytes this pipeline did not write; remove it or choose another path",
                          path, sinkbox__grouped((uint64_t)st.st_size).text);
  }
  close(fd);
  out->len = header_len;
  out->ino = (uint64_t)st.st_ino;
  return ok;
}

/* Opens the output at `path` (placeholders allowed) for this instance; see
 * above. `header` (may be NULL) starts a new file, e.g. a CSV header line. */
static inline bool sinkbox_output_open(sinkbox_output_t *out, const char *path, const sinkbox_context_t *context,
                                       const void *header, size_t header_len, sinkbox_error_t *err) {
  memset(out, 0, sizeof *out);
  if (!sinkbox_output_path(path, context, &out->path, err)) return false;
  out->probe = context->probe;
  if (context->probe) return true;
  bool ok = context->has_snapshot ? sinkbox__output_resume(out, context, err)
                                  : sinkbox__output_start(out, header, header_len, err);
  /* After a failed open nothing else is called, close included. */
  if (!ok) sinkbox_output_close(out);
  return ok;
}

/* Appends bytes (may be none) to the output, syncs, and sets the snapshot to
 * the new length. Call it from flush. */
static inline bool sinkbox_output_append(sinkbox_output_t *out, const void *bytes, size_t len,
                                         sinkbox_snapshot_t *snapshot, sinkbox_error_t *err) {
  const char *path = out->path;
  if (!path) return sinkbox_fatal(err, "output written before it was opened");
  if (out->probe) return sinkbox_fatal(err, "a probe instance must not write its output");
  int fd = open(path, O_WRONLY);
  if (fd < 0 && errno == ENOENT)
    return sinkbox_fatalf(err, "output %s was deleted or moved while the sink was writing it (it should hold %s bytes)",
                          path, sinkbox__grouped(out->len).text);
  if (fd < 0) return sinkbox_retryablef(err, "cannot open output %s: %s", path, strerror(errno));
  struct stat st;
  memset(&st, 0, sizeof st);
  bool ok = true;
  if (fstat(fd, &st) != 0) {
    ok = sinkbox_retryablef(err, "cannot stat output %s: %s", path, strerror(errno));
  } else if ((uint64_t)st.st_ino != out->ino) {
    ok = sinkbox_fatalf(err, "output %s was replaced by another file while the sink was writing it", path);
  } else if ((uint64_t)st.st_size < out->len) {
    ok = sinkbox_fatalf(err, "output %s is %s bytes but the sink made %s durable: it was truncated outside sinkbox", path,
                        sinkbox__grouped((uint64_t)st.st_size).text, sinkbox__grouped(out->len).text);
  } else if ((uint64_t)st.st_size > out->len) {
    ok = sinkbox_fatalf(err, "output %s is %s bytes but the sink wrote %s: something else writes to it", path,
                        sinkbox__grouped((uint64_t)st.st_size).text, sinkbox__grouped(out->len).text);
  } else if (len > 0 && (!sinkbox__pwrite_all(fd, bytes, len, out->len) || fsync(fd) != 0)) {
    ok = sinkbox_retryablef(err, "cannot write output %s: %s", path, strerror(errno));
    /* Leave the file as the last flush left it (best effort: a fresh
     * instance cuts it back to the committed snapshot anyway). */
    (void)ftruncate(fd, (off_t)out->len);
  }
  close(fd);
  if (!ok) return false;
  out->len += len;
  return sinkbox__output_snapshot(out, snapshot);
}

/* --- SINKBOX_EXPORT: a sink as plain C callbacks ------------------------ */

/* A sink's callbacks. open, add, flush and abort are required; the others
 * may be left out. A callback that returns bool returns true on success,
 * or fills *err (sinkbox_fatal, sinkbox_rejected, ...) and returns false.
 * Arguments are valid only during the call: the SDK frees them after. */
typedef struct {
  /* The JSON Schema (draft 2020-12) of the config, or NULL for none. */
  const char *config_schema;
  /* config: a JSON object (the SDK answered anything else with `fatal`);
   * context: what this instance serves, with its last committed snapshot.
   * A probe instance (context->probe) must not write, roll back or take
   * anything the live instance holds: flush is never called on it. */
  bool (*open)(const sinkbox_json_t *config, const sinkbox_context_t *context, sinkbox_error_t *err);
  /* Take a batch; decode it with sinkbox_records. */
  bool (*add)(const sinkbox_batch_t *batch, sinkbox_error_t *err);
  /* Make everything added since the last flush durable; optionally set the
   * snapshot (starts as none) that a later open receives. */
  bool (*flush)(sinkbox_snapshot_t *snapshot, sinkbox_error_t *err);
  /* Fill the counts since the previous call (status starts zeroed) and
   * return true, or return false for none. NULL: none, always. */
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

static inline char *sinkbox__cstr(const sink_world_string_t *s) {
  char *c = malloc(s->len + 1);
  if (!c) abort();
  if (s->len) memcpy(c, s->ptr, s->len);
  c[s->len] = 0;
  return c;
}

static inline bool sinkbox__export_open(const sinkbox_sink_t *s, sink_world_string_t *config,
                                        exports_sinkbox_sink_sink_context_t *raw, sinkbox_error_t *err) {
  char *pipeline = sinkbox__cstr(&raw->pipeline), *sink = sinkbox__cstr(&raw->sink), *topic = sinkbox__cstr(&raw->topic);
  sinkbox_context_t context = {
      pipeline,
      sink,
      topic,
      raw->partition,
      raw->lane,
      raw->lanes,
      raw->worker_index,
      raw->worker_count,
      raw->snapshot.is_some,
      raw->snapshot.is_some ? raw->snapshot.val.ptr : NULL,
      raw->snapshot.is_some ? raw->snapshot.val.len : 0,
      raw->probe,
  };
  sinkbox_json_t doc;
  bool ok;
  if (!s->open || !s->add || !s->flush || !s->abort)
    ok = sinkbox_fatal(err, "the sink's SINKBOX_EXPORT lacks one of open, add, flush, abort");
  else
    ok = sinkbox_json_parse(&doc, "config", config->ptr, config->len, err) && s->open(&doc, &context, err);
  free(pipeline);
  free(sink);
  free(topic);
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
    ok = sinkbox_fatalf(err, "flush returned a snapshot of %zu bytes; the limit is %u", ret->val.len,
                        SINKBOX_SNAPSHOT_MAX);
  if (!ok) {
    sink_world_option_list_u8_free(ret);
    ret->is_some = false;
  }
  return ok;
}

static inline bool sinkbox__export_status(const sinkbox_sink_t *s, sinkbox_status_t *ret) {
  memset(ret, 0, sizeof *ret);
  if (!s->status) return false;
  if (s->status(ret)) return true;
  exports_sinkbox_sink_sink_sink_status_free(ret);
  return false;
}

static inline bool sinkbox__export_close(const sinkbox_sink_t *s, sinkbox_error_t *err) {
  return !s->close || s->close(err);
}

/* Defines the sink's exports from its callbacks, given as designated
 * initializers of sinkbox_sink_t. Use it once, at file scope:
 *
 *   SINKBOX_EXPORT(.config_schema = SCHEMA, .open = my_open, .add = my_add,
 *                  .flush = my_flush, .abort = my_abort);
 *
 * The SDK frees what the runtime passes in (config, context, batch), refuses
 * a config that is not a JSON object before calling open, and refuses a
 * snapshot over 64 KiB. */
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
