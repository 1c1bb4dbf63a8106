/* Native tests of sinkbox_sdk.h: the JSON accessor, the record decoder and
 * the SINKBOX_EXPORT wrappers, with cases as data (tests/jsonl_sink_test.c
 * covers sinkbox_output_t through the example). Run from the repository
 * root (for the host, not wasm32):
 *
 *   clang -std=gnu11 -Wall -Werror -Wno-unknown-attributes -Iguest-sdk/c -Iguest-sdk/c/bindings \
 *      guest-sdk/c/tests/sdk_test.c guest-sdk/c/bindings/sink_world.c -o /tmp/sdk_test && /tmp/sdk_test
 */

#include "sinkbox_sdk.h"

static int failures;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      failures++;                                           \
      fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);       \
      fprintf(stderr, __VA_ARGS__);                         \
      fputc('\n', stderr);                                  \
    }                                                       \
  } while (0)

/* What the bindings link against inside a component. */
void __component_type_object_force_link_sink_world(void) {}

/* The host import the bindings call; the tests log nothing. */
void __wasm_import_sinkbox_sink_host_log(int32_t level, uint8_t *m, size_t n, uint8_t *f, size_t k) {
  (void)level, (void)m, (void)n, (void)f, (void)k;
}

static char *error_text(sinkbox_error_t *err) {
  sink_world_string_t *s = err->tag == SINKBOX_SINK_TYPES_SINK_ERROR_FATAL ? &err->val.fatal : &err->val.retryable;
  char *text = sinkbox__cstr(s);
  sink_world_string_free(s);
  return text;
}

/* Parses config as "config"; returns NULL when it is accepted, else the error. */
static char *parse(sinkbox_json_t *doc, const char *config) {
  sinkbox_error_t err;
  if (sinkbox_json_parse(doc, "config", config, strlen(config), &err)) return NULL;
  return error_text(&err);
}

static void test_parse(void) {
  static const struct {
    const char *config, *error; /* error: a prefix of the message, or NULL */
  } cases[] = {
      {"{}", NULL},
      {" {\"a\": [1, {\"b\": null}], \"c\": \"x\\\"y\"} ", NULL},
      {"", "config is empty; expected a JSON object"},
      {"not json", "config is not valid JSON: expected a value at byte 0"},
      {"{\"a\" 1}", "config is not valid JSON: expected ':' after the key at byte 5"},
      {"{\"a\": 1,}", "config is not valid JSON: expected a string key at byte 8"},
      {"{\"a\": [1 2]}", "config is not valid JSON: expected ',' or ']' at byte 9"},
      {"{\"a\": \"x", "config is not valid JSON: unterminated string"},
      {"{\"a\": \"\\q\"}", "config is not valid JSON: invalid escape in a string"},
      {"{\"a\": 01}", "config is not valid JSON: expected ',' or '}' at byte 7"},
      {"{} x", "config is not valid JSON: unexpected text after the value at byte 3"},
      {"[1]", "config must be a JSON object, not an array"},
      {"\"path\"", "config must be a JSON object, not a string"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    sinkbox_json_t doc;
    char *got = parse(&doc, cases[k].config);
    if (!cases[k].error) CHECK(!got, "%s: unexpected error %s", cases[k].config, got);
    else CHECK(got && strncmp(got, cases[k].error, strlen(cases[k].error)) == 0, "%s: got %s, want %s",
               cases[k].config, got ? got : "(ok)", cases[k].error);
    free(got);
  }
  /* Deep nesting is an error, not a stack overflow. */
  char deep[600];
  memset(deep, '[', 300);
  memcpy(deep, "{\"a\":", 5);
  deep[300] = 0;
  sinkbox_json_t doc;
  char *got = parse(&doc, deep);
  CHECK(got && strstr(got, "nested deeper than 128 levels"), "deep: %s", got);
  free(got);
}

static const char *CONFIG =
    "{\"path\": \"/out/\\u00e9t\\u00e9/{lane}.jsonl\", \"size\": -9223372036854775808, \"big\": 9223372036854775808,"
    " \"ratio\": 2.5e-1, \"flag\": true, \"off\": false, \"nothing\": null, \"cols\": [\"a\", \"b\\n\", \"\"],"
    " \"mixed\": [\"a\", 1], \"nul\": \"a\\u0000b\", \"lone\": \"\\ud800x\", \"emoji\": \"\\ud83d\\ude00\","
    " \"twice\": 1, \"twice\": 2, \"esc\\u0061ped\": \"yes\", \"frac\": 1.5, \"obj\": {\"path\": \"inner\"}}";

static void test_getters(void) {
  sinkbox_json_t doc;
  char *bad = parse(&doc, CONFIG);
  CHECK(!bad, "CONFIG: %s", bad);
  sinkbox_error_t err;
  char *s = NULL;
  CHECK(sinkbox_json_string(&doc, "path", SINKBOX_REQUIRED, &s, &err) && strcmp(s, "/out/\xc3\xa9t\xc3\xa9/{lane}.jsonl") == 0,
        "path: %s", s);
  free(s);
  CHECK(sinkbox_json_string(&doc, "emoji", SINKBOX_REQUIRED, &s, &err) && strcmp(s, "\xf0\x9f\x98\x80") == 0, "emoji");
  free(s);
  CHECK(sinkbox_json_string(&doc, "escaped", SINKBOX_REQUIRED, &s, &err) && strcmp(s, "yes") == 0, "escaped key");
  free(s);
  CHECK(sinkbox_json_string(&doc, "absent", SINKBOX_OPTIONAL, &s, &err) && s == NULL, "optional string");
  CHECK(sinkbox_json_string(&doc, "nothing", SINKBOX_OPTIONAL, &s, &err) && s == NULL, "null is absent");
  /* The nested "path" is not a top-level key. */
  CHECK(sinkbox_json_string(&doc, "inner", SINKBOX_OPTIONAL, &s, &err) && s == NULL, "nested");

  int64_t i = 7;
  CHECK(sinkbox_json_int(&doc, "size", SINKBOX_REQUIRED, &i, &err) && i == INT64_MIN, "size: %lld", (long long)i);
  i = 7;
  CHECK(sinkbox_json_int(&doc, "absent", SINKBOX_OPTIONAL, &i, &err) && i == 7, "default kept");
  double d = 0;
  CHECK(sinkbox_json_number(&doc, "ratio", SINKBOX_REQUIRED, &d, &err) && d == 0.25, "ratio: %g", d);
  bool b = false;
  CHECK(sinkbox_json_bool(&doc, "flag", SINKBOX_REQUIRED, &b, &err) && b, "flag");
  CHECK(sinkbox_json_bool(&doc, "off", SINKBOX_REQUIRED, &b, &err) && !b, "off");
  sinkbox_strings_t list;
  CHECK(sinkbox_json_strings(&doc, "cols", SINKBOX_REQUIRED, &list, &err) && list.len == 3 &&
            strcmp(list.items[0], "a") == 0 && strcmp(list.items[1], "b\n") == 0 && strcmp(list.items[2], "") == 0,
        "cols");
  sinkbox_strings_free(&list);

  static const struct {
    int kind; /* 0 string, 1 int, 2 number, 3 bool, 4 strings */
    const char *key, *error;
  } errors[] = {
      {0, "absent", "config needs \"absent\" (a string)"},
      {0, "nothing", "config needs \"nothing\" (a string)"},
      {0, "size", "config \"size\" must be a string, not a number"},
      {0, "nul", "config \"nul\" holds a NUL character (\\u0000), which a C string cannot carry"},
      {0, "lone", "config \"lone\" holds an unpaired UTF-16 surrogate"},
      {0, "twice", "config has the key \"twice\" twice"},
      {1, "big", "config \"big\" is out of range: 9223372036854775808"},
      {1, "frac", "config \"frac\" must be an integer, not 1.5"},
      {1, "ratio", "config \"ratio\" must be an integer, not 2.5e-1"},
      {1, "path", "config \"path\" must be an integer, not a string"},
      {2, "flag", "config \"flag\" must be a number, not a boolean"},
      {3, "size", "config \"size\" must be true or false, not a number"},
      {3, "absent", "config needs \"absent\" (true or false)"},
      {4, "path", "config \"path\" must be an array of strings, not a string"},
      {4, "mixed", "config \"mixed\"[1] must be a string, not a number"},
      {4, "obj", "config \"obj\" must be an array of strings, not an object"},
  };
  for (size_t k = 0; k < sizeof errors / sizeof *errors; k++) {
    bool ok;
    switch (errors[k].kind) {
      case 0: ok = sinkbox_json_string(&doc, errors[k].key, SINKBOX_REQUIRED, &s, &err); break;
      case 1: ok = sinkbox_json_int(&doc, errors[k].key, SINKBOX_REQUIRED, &i, &err); break;
      case 2: ok = sinkbox_json_number(&doc, errors[k].key, SINKBOX_REQUIRED, &d, &err); break;
      case 3: ok = sinkbox_json_bool(&doc, errors[k].key, SINKBOX_REQUIRED, &b, &err); break;
      default: ok = sinkbox_json_strings(&doc, errors[k].key, SINKBOX_REQUIRED, &list, &err); break;
    }
    CHECK(!ok, "%s: accepted", errors[k].key);
    if (ok) continue;
    CHECK(err.tag == SINKBOX_SINK_TYPES_SINK_ERROR_FATAL, "%s: not fatal", errors[k].key);
    char *got = error_text(&err);
    CHECK(strcmp(got, errors[k].error) == 0, "%s: got %s, want %s", errors[k].key, got, errors[k].error);
    free(got);
  }

  /* A long string comes back whole: no fixed-size buffer anywhere. */
  size_t n = 100000;
  char *big = malloc(n + 32);
  strcpy(big, "{\"path\": \"");
  memset(big + 10, 'x', n);
  strcpy(big + 10 + n, "\"}");
  CHECK(!parse(&doc, big), "big config");
  CHECK(sinkbox_json_string(&doc, "path", SINKBOX_REQUIRED, &s, &err) && strlen(s) == n, "big path");
  free(s);
  free(big);
}

/* A batch in the packed format of wit/types.wit. */
static size_t put_record(uint8_t *p, uint64_t offset, const char *key, const char *value) {
  size_t at = 0, kl = key ? strlen(key) : 0, vl = strlen(value);
  for (int k = 0; k < 8; k++) p[at++] = (uint8_t)(offset >> (8 * k));
  for (int k = 0; k < 8; k++) p[at++] = (uint8_t)((uint64_t)INT64_MIN >> (8 * k));
  uint32_t fields[3] = {key ? (uint32_t)kl : 0xFFFFFFFFu, (uint32_t)vl, 0};
  for (int f = 0; f < 3; f++)
    for (int k = 0; k < 4; k++) p[at++] = (uint8_t)(fields[f] >> (8 * k));
  if (key) memcpy(p + at, key, kl);
  at += kl;
  memcpy(p + at, value, vl);
  return at + vl;
}

static void test_records(void) {
  uint8_t data[256];
  size_t len = put_record(data, 41, "k", "{\"n\":41}");
  len += put_record(data + len, 42, NULL, "{\"n\":42}");
  sinkbox_batch_t batch = {{(uint8_t *)"topic", 5}, 3, 2, {data, len}};
  sinkbox_records_t it = sinkbox_records(&batch);
  sinkbox_record_t r;
  CHECK(sinkbox_records_next(&it, &r) == 1 && r.offset == 41 && r.has_key && r.key_len == 1 && !r.has_timestamp &&
            r.partition == 3 && r.topic_len == 5 && memcmp(r.topic, "topic", 5) == 0,
        "first record");
  CHECK(sinkbox_records_next(&it, &r) == 1 && r.offset == 42 && !r.has_key && r.value_len == 8, "second record");
  CHECK(sinkbox_records_next(&it, &r) == 0, "end");
  /* Cut anywhere, the buffer is malformed, never read past. */
  for (size_t cut = 0; cut < len; cut++) {
    sinkbox_batch_t short_batch = {{(uint8_t *)"t", 1}, 0, 2, {data, cut}};
    it = sinkbox_records(&short_batch);
    int got;
    while ((got = sinkbox_records_next(&it, &r)) == 1) {}
    CHECK(got == -1, "cut at %zu: %d", cut, got);
  }
}

/* A tombstone carries the header sinkbox.tombstone; other headers are
 * found by name, and a record without them has none. */
static void test_headers(void) {
  uint8_t data[256];
  size_t len = put_record(data, 7, "gone", "");
  data[24] = 2; /* header count */
  const char *headers[4] = {"trace", "abc", SINKBOX_TOMBSTONE_HEADER, ""};
  for (int h = 0; h < 4; h++) {
    uint32_t n = (uint32_t)strlen(headers[h]);
    for (int k = 0; k < 4; k++) data[len++] = (uint8_t)(n >> (8 * k));
    memcpy(data + len, headers[h], n);
    len += n;
  }
  len += put_record(data + len, 8, NULL, "{}");
  sinkbox_batch_t batch = {{(uint8_t *)"t", 1}, 0, 2, {data, len}};
  sinkbox_records_t it = sinkbox_records(&batch);
  sinkbox_record_t r;
  const uint8_t *value;
  size_t value_len;
  CHECK(sinkbox_records_next(&it, &r) == 1 && sinkbox_record_is_tombstone(&r) && r.value_len == 0, "tombstone");
  CHECK(sinkbox_record_header(&r, "trace", &value, &value_len) && value_len == 3 && memcmp(value, "abc", 3) == 0,
        "trace header");
  CHECK(!sinkbox_record_header(&r, "trac", &value, &value_len), "no prefix match");
  CHECK(sinkbox_records_next(&it, &r) == 1 && !sinkbox_record_is_tombstone(&r), "not a tombstone");
}

/* SINKBOX_EXPORT: the wrappers check the config, hand the context over and
 * keep snapshots within the limit. */
static char *opened_topic;
static uint32_t opened_lane;
static size_t snapshot_size;

static bool t_open(const sinkbox_json_t *config, const sinkbox_context_t *context, sinkbox_error_t *err) {
  free(opened_topic);
  opened_topic = malloc(strlen(context->topic) + 1);
  strcpy(opened_topic, context->topic);
  opened_lane = context->lane;
  int64_t size = 0;
  if (!sinkbox_json_int(config, "snapshot", SINKBOX_OPTIONAL, &size, err)) return false;
  snapshot_size = (size_t)size;
  return true;
}
static bool t_add(const sinkbox_batch_t *batch, sinkbox_error_t *err) {
  (void)batch, (void)err;
  return true;
}
static bool t_flush(sinkbox_snapshot_t *snapshot, sinkbox_error_t *err) {
  (void)err;
  char *bytes = calloc(1, snapshot_size + 1);
  sinkbox_snapshot_set(snapshot, bytes, snapshot_size);
  free(bytes);
  return true;
}
static bool t_status(sinkbox_status_t *status) {
  status->written = 3;
  sinkbox_status_custom(status, "retries", 2);
  return true;
}
static void t_abort(void) {}

SINKBOX_EXPORT(.open = t_open, .add = t_add, .flush = t_flush, .status = t_status, .abort = t_abort);

static bool call_open(const char *config, sinkbox_error_t *err) {
  sink_world_string_t c;
  sink_world_string_dup(&c, config);
  exports_sinkbox_sink_sink_context_t ctx = {0};
  sink_world_string_dup(&ctx.pipeline, "p");
  sink_world_string_dup(&ctx.sink, "s");
  sink_world_string_dup(&ctx.topic, "orders");
  ctx.lane = 2;
  ctx.lanes = 4;
  return exports_sinkbox_sink_sink_open(&c, &ctx, err);
}

static void test_export(void) {
  sinkbox_error_t err;
  sink_world_string_t schema;
  CHECK(!exports_sinkbox_sink_sink_config_schema(&schema), "no schema");
  CHECK(!call_open("not json", &err) && err.tag == SINKBOX_SINK_TYPES_SINK_ERROR_FATAL, "bad config is fatal");
  free(error_text(&err));
  CHECK(call_open("{\"snapshot\": 8}", &err), "open");
  CHECK(opened_topic && strcmp(opened_topic, "orders") == 0 && opened_lane == 2, "context");
  sinkbox_snapshot_t snap;
  CHECK(exports_sinkbox_sink_sink_flush(&snap, &err) && snap.is_some && snap.val.len == 8, "snapshot");
  sink_world_option_list_u8_free(&snap);
  CHECK(call_open("{\"snapshot\": 65537}", &err), "open");
  CHECK(!exports_sinkbox_sink_sink_flush(&snap, &err), "oversized snapshot");
  char *got = error_text(&err);
  CHECK(strcmp(got, "flush returned a snapshot of 65537 bytes; the limit is 65536") == 0, "%s", got);
  free(got);
  sinkbox_status_t status;
  CHECK(exports_sinkbox_sink_sink_status(&status) && status.written == 3 && status.custom.len == 1 &&
            status.custom.ptr[0].f1 == 2,
        "status");
  exports_sinkbox_sink_sink_sink_status_free(&status);
  CHECK(exports_sinkbox_sink_sink_close(&err), "close without a callback");
  free(opened_topic);
}

static void test_grouped(void) {
  static const struct {
    uint64_t n;
    const char *text;
  } cases[] = {{0, "0"}, {999, "999"}, {4000, "4,000"}, {1234567, "1,234,567"}, {UINT64_MAX, "18,446,744,073,709,551,615"}};
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
    CHECK(strcmp(sinkbox__grouped(cases[k].n).text, cases[k].text) == 0, "%s", sinkbox__grouped(cases[k].n).text);
}

int main(void) {
  test_grouped();
  test_parse();
  test_getters();
  test_records();
  test_headers();
  test_export();
  if (failures) fprintf(stderr, "%d failures\n", failures);
  else printf("sdk_test: ok\n");
  return failures != 0;
}
