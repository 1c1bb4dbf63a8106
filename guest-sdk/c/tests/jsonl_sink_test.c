/* Native tests of examples/jsonl_sink and sinkbox_output_t: the snapshot
 * pattern for file sinks, driven through the sink's exports in a scratch
 * directory. Run from the repository root (for the host, not wasm32):
 *
 *   clang -std=gnu11 -Wall -Werror -Wno-unknown-attributes -Iguest-sdk/c -Iguest-sdk/c/bindings \
 *      guest-sdk/c/tests/jsonl_sink_test.c guest-sdk/c/bindings/sink_world.c -o /tmp/jsonl_sink_test \
 *      && /tmp/jsonl_sink_test
 */

#include "../examples/jsonl_sink/sink.c"

static int failures;
static char dir[64];

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      failures++;                                           \
      fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);       \
      fprintf(stderr, __VA_ARGS__);                         \
      fputc('\n', stderr);                                  \
    }                                                       \
  } while (0)

void __component_type_object_force_link_sink_world(void) {}
void __wasm_import_sinkbox_sink_host_log(int32_t level, uint8_t *m, size_t n, uint8_t *f, size_t k) {
  (void)level, (void)m, (void)n, (void)f, (void)k;
}

/* An instance's context, as the runtime passes it. */
typedef struct {
  uint32_t partition, lane, lanes;
  const char *snapshot; /* NULL: none */
  bool probe;
} ctx_t;

static char last_error[1024];

/* Remembers the error's text (and frees the error) for the checks. */
static void keep_error(sinkbox_error_t *err) {
  sink_world_string_t *s = err->tag == SINKBOX_SINK_TYPES_SINK_ERROR_FATAL       ? &err->val.fatal
                           : err->tag == SINKBOX_SINK_TYPES_SINK_ERROR_RETRYABLE ? &err->val.retryable
                                                                                 : NULL;
  if (s) snprintf(last_error, sizeof last_error, "%s%.*s", err->tag == SINKBOX_SINK_TYPES_SINK_ERROR_FATAL ? "fatal: " : "retryable: ", (int)s->len, s->ptr);
  else snprintf(last_error, sizeof last_error, "tag %d", err->tag);
  sinkbox_sink_types_sink_error_free(err);
}

static bool open_sink(const char *config, ctx_t c) {
  sink_world_string_t text;
  sink_world_string_dup(&text, config);
  exports_sinkbox_sink_sink_context_t ctx = {0};
  sink_world_string_dup(&ctx.pipeline, "p");
  sink_world_string_dup(&ctx.sink, "jsonl");
  sink_world_string_dup(&ctx.topic, "");
  ctx.partition = c.partition;
  ctx.lane = c.lane;
  ctx.lanes = c.lanes ? c.lanes : 1;
  ctx.worker_count = 1;
  ctx.probe = c.probe;
  if (c.snapshot) {
    ctx.snapshot.is_some = true;
    ctx.snapshot.val.len = strlen(c.snapshot);
    ctx.snapshot.val.ptr = malloc(ctx.snapshot.val.len);
    memcpy(ctx.snapshot.val.ptr, c.snapshot, ctx.snapshot.val.len);
  }
  sinkbox_error_t err;
  last_error[0] = 0;
  if (exports_sinkbox_sink_sink_open(&text, &ctx, &err)) return true;
  keep_error(&err);
  return false;
}

static bool add(uint64_t from, uint64_t to, const char *odd_value) {
  uint8_t *data = malloc((to - from) * 64 + 64);
  size_t len = 0;
  for (uint64_t o = from; o < to; o++) {
    char value[32];
    snprintf(value, sizeof value, "{\"n\":%llu}", (unsigned long long)o);
    const char *v = odd_value && o == from ? odd_value : value;
    uint32_t fields[3] = {0xFFFFFFFFu, (uint32_t)strlen(v), 0};
    for (int k = 0; k < 8; k++) data[len++] = (uint8_t)(o >> (8 * k));
    for (int k = 0; k < 8; k++) data[len++] = (uint8_t)((uint64_t)INT64_MIN >> (8 * k));
    for (int f = 0; f < 3; f++)
      for (int k = 0; k < 4; k++) data[len++] = (uint8_t)(fields[f] >> (8 * k));
    memcpy(data + len, v, strlen(v));
    len += strlen(v);
  }
  sinkbox_batch_t batch;
  sink_world_string_dup(&batch.topic, "t");
  batch.partition = 0;
  batch.count = (uint32_t)(to - from);
  batch.data.ptr = data;
  batch.data.len = len;
  sinkbox_error_t err;
  last_error[0] = 0;
  if (exports_sinkbox_sink_sink_add(&batch, &err)) return true;
  if (err.tag == SINKBOX_SINK_TYPES_SINK_ERROR_REJECTED) {
    snprintf(last_error, sizeof last_error, "rejected %zu: %llu %.*s", err.val.rejected.len,
             (unsigned long long)err.val.rejected.ptr[0].offset, (int)err.val.rejected.ptr[0].reason.len,
             err.val.rejected.ptr[0].reason.ptr);
    sinkbox_sink_types_sink_error_free(&err);
  } else {
    keep_error(&err);
  }
  return false;
}

static char snapshot[64];

static bool flush(void) {
  sinkbox_snapshot_t snap;
  sinkbox_error_t err;
  last_error[0] = 0;
  snapshot[0] = 0;
  if (!exports_sinkbox_sink_sink_flush(&snap, &err)) {
    keep_error(&err);
    return false;
  }
  if (snap.is_some) snprintf(snapshot, sizeof snapshot, "%.*s", (int)snap.val.len, snap.val.ptr);
  sink_world_option_list_u8_free(&snap);
  return true;
}

static void close_sink(void) {
  sinkbox_error_t err;
  if (!exports_sinkbox_sink_sink_close(&err)) keep_error(&err);
}

static char *path(const char *name) {
  static char p[4][128];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
  return p[k];
}

static char *config(const char *name) {
  static char c[256];
  snprintf(c, sizeof c, "{\"path\": \"%s/%s\"}", dir, name);
  return c;
}

static char *read_file(const char *name) {
  static char text[8192];
  FILE *f = fopen(path(name), "r");
  if (!f) return NULL;
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
  return text;
}

static void write_file(const char *name, const char *text) {
  FILE *f = fopen(path(name), "w");
  fputs(text, f);
  fclose(f);
}

static char *lines_for(uint64_t from, uint64_t to) {
  static char text[8192];
  size_t len = 0;
  for (uint64_t o = from; o < to; o++) len += (size_t)sprintf(text + len, "{\"n\":%llu}\n", (unsigned long long)o);
  text[len] = 0;
  return text;
}

#define EXPECT_ERROR(call, want)                                                                 \
  do {                                                                                          \
    bool ok_ = (call);                                                                          \
    CHECK(!ok_ && strstr(last_error, want) != NULL, "%s: got \"%s\", want \"%s\"", #call,      \
          ok_ ? "(ok)" : last_error, want);                                                     \
  } while (0)

static void test_compliance_flow(void) {
  /* What the contract-compliance harness does. */
  CHECK(open_sink(config("a.jsonl"), (ctx_t){0}), "open: %s", last_error);
  CHECK(read_file("a.jsonl") && !*read_file("a.jsonl"), "a first open starts an empty file");
  CHECK(add(0, 10, NULL), "add: %s", last_error);
  exports_sinkbox_sink_sink_abort();
  CHECK(add(0, 10, NULL) && add(10, 25, NULL), "add: %s", last_error);
  CHECK(flush(), "flush: %s", last_error);
  size_t len = strlen(lines_for(0, 25));
  char want[64];
  snprintf(want, sizeof want, "{\"len\":%zu}", len);
  CHECK(strcmp(snapshot, want) == 0, "snapshot %s, want %s", snapshot, want);
  sinkbox_status_t status;
  CHECK(exports_sinkbox_sink_sink_status(&status) && status.written == 25, "status: %llu",
        (unsigned long long)status.written);
  exports_sinkbox_sink_sink_sink_status_free(&status);
  CHECK(add(25, 30, NULL), "add");
  exports_sinkbox_sink_sink_abort();
  CHECK(flush() && strcmp(snapshot, want) == 0, "empty flush: %s %s", last_error, snapshot);
  CHECK(exports_sinkbox_sink_sink_status(&status) && status.written == 0, "status after an empty flush");
  exports_sinkbox_sink_sink_sink_status_free(&status);
  CHECK(strcmp(read_file("a.jsonl"), lines_for(0, 25)) == 0, "exactly the flushed records: %s", read_file("a.jsonl"));
  close_sink();

  /* A restart after a flush whose checkpoint was not committed: the runtime
   * hands back the committed snapshot and replays from there. */
  CHECK(open_sink(config("a.jsonl"), (ctx_t){0}) == false, "a second first run is refused");
  CHECK(strstr(last_error, "already holds 215 bytes this pipeline did not write; remove it or choose another path"),
        "%s", last_error);
  char committed[64];
  snprintf(committed, sizeof committed, "{\"len\":%zu}", strlen(lines_for(0, 10)));
  CHECK(open_sink(config("a.jsonl"), (ctx_t){.snapshot = committed}), "resume: %s", last_error);
  CHECK(strcmp(read_file("a.jsonl"), lines_for(0, 10)) == 0, "cut back to the snapshot");
  CHECK(add(10, 30, NULL) && flush(), "replay: %s", last_error);
  CHECK(strcmp(read_file("a.jsonl"), lines_for(0, 30)) == 0, "each record once");
  close_sink();
}

static void test_changed_under_the_sink(void) {
  CHECK(open_sink(config("b.jsonl"), (ctx_t){0}) && add(0, 5, NULL) && flush(), "setup: %s", last_error);
  char committed[64];
  strcpy(committed, snapshot);
  /* Truncated between two flushes. */
  write_file("b.jsonl", "x");
  CHECK(add(5, 6, NULL), "add");
  EXPECT_ERROR(flush(), "fatal: output ");
  CHECK(strstr(last_error, "b.jsonl is 1 bytes but the sink made 40 durable: it was truncated outside sinkbox"), "%s",
        last_error);
  close_sink();
  /* ... and a fresh instance with the committed snapshot says what changed. */
  EXPECT_ERROR(open_sink(config("b.jsonl"), (ctx_t){.snapshot = committed}),
               "b.jsonl is 1 bytes but 40 were committed: it was truncated or replaced outside sinkbox");
  /* Deleted. */
  unlink(path("b.jsonl"));
  EXPECT_ERROR(open_sink(config("b.jsonl"), (ctx_t){.snapshot = committed}),
               "b.jsonl is missing but 40 bytes were committed: it was deleted or moved outside sinkbox");
  CHECK(access(path("b.jsonl"), F_OK) != 0, "never recreated");

  /* Replaced by another file of the same length while the sink runs. */
  CHECK(open_sink(config("c.jsonl"), (ctx_t){0}) && add(0, 2, NULL) && flush(), "setup: %s", last_error);
  write_file("other", lines_for(0, 2));
  rename(path("other"), path("c.jsonl"));
  EXPECT_ERROR(flush(), "c.jsonl was replaced by another file while the sink was writing it");
  close_sink();
  /* Written to by something else. */
  CHECK(open_sink(config("d.jsonl"), (ctx_t){0}) && add(0, 2, NULL) && flush(), "setup: %s", last_error);
  FILE *f = fopen(path("d.jsonl"), "a");
  fputs("intruder\n", f);
  fclose(f);
  EXPECT_ERROR(flush(), "d.jsonl is 25 bytes but the sink wrote 16: something else writes to it");
  close_sink();
  /* Deleted while the sink runs. */
  CHECK(open_sink(config("e.jsonl"), (ctx_t){0}) && flush(), "setup: %s", last_error);
  unlink(path("e.jsonl"));
  EXPECT_ERROR(flush(), "e.jsonl was deleted or moved while the sink was writing it (it should hold 0 bytes)");
  close_sink();
  /* A bad snapshot is an error, not a guess. */
  EXPECT_ERROR(open_sink(config("a.jsonl"), (ctx_t){.snapshot = "{\"size\":3}"}), "snapshot needs \"len\" (an integer)");
  EXPECT_ERROR(open_sink(config("a.jsonl"), (ctx_t){.snapshot = "garbage"}), "snapshot is not valid JSON");
}

static void test_probe(void) {
  /* A probe touches nothing: no file, no truncation, no write. */
  CHECK(open_sink(config("probe.jsonl"), (ctx_t){.probe = true}), "probe open: %s", last_error);
  CHECK(add(0, 3, NULL), "probe add");
  exports_sinkbox_sink_sink_abort();
  CHECK(access(path("probe.jsonl"), F_OK) != 0, "a probe creates no file");
  EXPECT_ERROR(flush(), "a probe instance must not write its output");
  close_sink();
  char before[8192];
  strcpy(before, read_file("a.jsonl"));
  CHECK(open_sink(config("a.jsonl"), (ctx_t){.probe = true, .snapshot = "{\"len\":1}"}), "probe: %s", last_error);
  close_sink();
  CHECK(strcmp(read_file("a.jsonl"), before) == 0, "a probe does not roll the live output back");
}

static void test_placeholders_and_config(void) {
  EXPECT_ERROR(open_sink(config("lanes.jsonl"), (ctx_t){.lane = 1, .lanes = 2}),
               "lanes.jsonl has no {lane} placeholder but the sink runs on 2 lanes");
  EXPECT_ERROR(open_sink(config("parts.jsonl"), (ctx_t){.partition = 3}),
               "parts.jsonl has no {partition} placeholder but this instance serves partition 3");
  CHECK(open_sink(config("out-{partition}-{lane}.jsonl"), (ctx_t){.partition = 3, .lane = 1, .lanes = 2}), "%s",
        last_error);
  CHECK(add(0, 1, NULL) && flush(), "%s", last_error);
  CHECK(read_file("out-3-1.jsonl") && strcmp(read_file("out-3-1.jsonl"), "{\"n\":0}\n") == 0, "placeholders filled in");
  close_sink();
  EXPECT_ERROR(open_sink("not json", (ctx_t){0}), "fatal: config is not valid JSON: expected a value at byte 0");
  EXPECT_ERROR(open_sink("{\"path\": 5}", (ctx_t){0}), "fatal: config \"path\" must be a string, not a number");
  EXPECT_ERROR(open_sink("{}", (ctx_t){0}), "fatal: config needs \"path\" (a string)");
  EXPECT_ERROR(open_sink(config("no/such/dir/x.jsonl"), (ctx_t){0}), "fatal: cannot open output ");
}

static void test_rejections(void) {
  CHECK(open_sink(config("r.jsonl"), (ctx_t){0}), "%s", last_error);
  EXPECT_ERROR(add(0, 3, "{oops"), "rejected 1: 0 value is not JSON");
  EXPECT_ERROR(add(3, 4, "[1,\n2]"), "rejected 1: 3 value spans several lines");
  CHECK(flush(), "%s", last_error);
  CHECK(strcmp(read_file("r.jsonl"), "{\"n\":1}\n{\"n\":2}\n") == 0, "the rest of the batch: %s", read_file("r.jsonl"));
  close_sink();
}

int main(void) {
  strcpy(dir, "/tmp/sinkbox-c-test-XXXXXX");
  if (!mkdtemp(dir)) return 2;
  test_compliance_flow();
  test_changed_under_the_sink();
  test_probe();
  test_placeholders_and_config();
  test_rejections();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
  if (failures) fprintf(stderr, "%d failures\n", failures);
  else printf("jsonl_sink_test: ok\n");
  return failures != 0;
}
