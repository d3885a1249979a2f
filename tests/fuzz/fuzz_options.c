/*
 * fuzz_options: the qemu-img style option strings of vd_create().
 *
 * Input: an optional header line "FORMAT SIZE FLAGS\n" (any part may be
 * missing; defaults qcow2, 1 MiB, 0) followed by the option string, e.g.
 *
 *     qcow2 65536 0
 *     cluster_size=4k,lazy_refcounts=on,backing_file=base.qcow2
 *
 * The option string goes through the kv parser (parse, typed getters, key
 * checks, and a print/re-parse round trip) and then through vd_create() into
 * an in-memory file capped at 16 MiB. In the directory of the new image the
 * fuzz file layer also serves base.qcow2 and base.raw (read-only, usable as
 * backing_file) and data.raw (writable, usable as data_file); every other
 * name is refused. An image that vd_create() made must open, have the size
 * asked for, check clean and, without a backing file, read as zeroes.
 */
#include "fuzz_common.h"

#include "core/internal.h"
#include "core/options.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEW_IMAGE   MEMFILE_DIR "/new.img"
#define BASE_QCOW2  MEMFILE_DIR "/base.qcow2"
#define BASE_RAW    MEMFILE_DIR "/base.raw"
#define DATA_FILE   MEMFILE_DIR "/data.raw"
#define SCRATCH_CAP (16u << 20)
#define BASE_SIZE   (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *base_qcow2, *base_raw;
static size_t base_qcow2_len, base_raw_len;

/* Make a backing image with some data in it, in memory, and keep a copy of its bytes. */
static void make_base(const char *path, const char *format, const char *options, uint8_t **out,
                      size_t *len)
{
    memfile_add_scratch(path, SCRATCH_CAP);
    int rc = vd_create(path, format, BASE_SIZE, options, 0);
    vd_image *img = NULL;
    if (rc == 0)
        rc = vd_open(&img, path, format, VD_OPEN_RDWR | VD_OPEN_NO_LOCK);
    static uint8_t pattern[65536];
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (uint8_t)(i * 131 + 7);
    if (rc == 0)
        rc = vd_write(img, 65536, pattern, sizeof pattern, 0);
    if (rc == 0)
        rc = vd_write(img, 3 * 65536 + 512, pattern, 4096, 0);
    if (img) {
        int closed = vd_close(img);
        rc = rc ? rc : closed;
    }
    if (rc < 0) {
        fprintf(stderr, "fuzz_options: cannot make %s: %s\n", path, vd_errmsg());
        abort();
    }
    const uint8_t *content = memfile_content(path, len);
    *out = malloc(*len);
    memcpy(*out, content, *len);
    memfile_clear();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_init();
    make_base(BASE_QCOW2, "qcow2", "cluster_size=4096", &base_qcow2, &base_qcow2_len);
    make_base(BASE_RAW, "raw", NULL, &base_raw, &base_raw_len);
    return 0;
}

/* "k,v" -> "k,,v": how vd_kv_parse() reads a literal comma. */
static void append_escaped(char **p, const char *s)
{
    for (; *s; s++) {
        if (*s == ',')
            *(*p)++ = ',';
        *(*p)++ = *s;
    }
}

static void fuzz_kv(const char *text)
{
    static const char *const choices[] = { "off", "metadata", "falloc", "full", NULL };
    struct vd_kv kv;
    int rc = vd_kv_parse(&kv, text);
    fuzz_check_rc(rc, "vd_kv_parse");
    if (rc < 0) {
        FUZZ_ASSERT(kv.count == 0 && kv.pairs == NULL, "a failed parse left %zu pairs", kv.count);
        return;
    }
    size_t cap = 1;
    for (size_t i = 0; i < kv.count; i++) {
        const struct vd_kv_pair *pr = &kv.pairs[i];
        FUZZ_ASSERT(pr->key && pr->value, "pair %zu has a NULL key or value", i);
        for (size_t j = 0; j < i; j++)
            FUZZ_ASSERT(strcmp(kv.pairs[j].key, pr->key) != 0, "key '%s' appears twice", pr->key);
        FUZZ_ASSERT(vd_kv_get(&kv, pr->key) == pr->value, "vd_kv_get('%s') finds another pair",
                    pr->key);
        bool b;
        uint64_t n;
        size_t c;
        fuzz_check_rc(vd_kv_get_bool(&kv, pr->key, false, &b), "vd_kv_get_bool");
        fuzz_check_rc(vd_kv_get_size(&kv, pr->key, 0, &n), "vd_kv_get_size");
        fuzz_check_rc(vd_kv_get_choice(&kv, pr->key, choices, 0, &c), "vd_kv_get_choice");
        FUZZ_ASSERT(c < 4, "vd_kv_get_choice gave index %zu", c);
        cap += 2 * (strlen(pr->key) + strlen(pr->value)) + 2;
    }
    for (size_t f = 0; vd_format_name(f); f++) {
        const struct vd_backend *be = vd_backend_find(vd_format_name(f));
        FUZZ_ASSERT(be, "format %s is listed but not found", vd_format_name(f));
        fuzz_check_rc(vd_kv_check_keys(&kv, be->create_options, be->name), "vd_kv_check_keys");
    }

    /* print the pairs back and parse them again: the same pairs, in the same order */
    char *printed = malloc(cap), *p = printed;
    FUZZ_ASSERT(printed, "out of memory");
    for (size_t i = 0; i < kv.count; i++) {
        if (i)
            *p++ = ',';
        append_escaped(&p, kv.pairs[i].key);
        *p++ = '=';
        append_escaped(&p, kv.pairs[i].value);
    }
    *p = '\0';
    struct vd_kv again;
    rc = vd_kv_parse(&again, printed);
    FUZZ_ASSERT(rc == 0, "re-parsing the printed options '%s' failed: %s", printed, vd_errmsg());
    FUZZ_ASSERT(again.count == kv.count, "'%s' gave %zu pairs, printed as '%s' %zu", text,
                kv.count, printed, again.count);
    for (size_t i = 0; i < kv.count; i++)
        FUZZ_ASSERT(strcmp(kv.pairs[i].key, again.pairs[i].key) == 0 &&
                    strcmp(kv.pairs[i].value, again.pairs[i].value) == 0,
                    "pair %zu of '%s' ('%s'='%s') re-parses from '%s' as '%s'='%s'", i, text,
                    kv.pairs[i].key, kv.pairs[i].value, printed, again.pairs[i].key,
                    again.pairs[i].value);
    vd_kv_free(&again);

    /* replacing a value keeps the count; adding a new key appends */
    if (kv.count) {
        rc = vd_kv_set(&kv, kv.pairs[0].key, "replaced");
        FUZZ_ASSERT(rc == 0 && strcmp(vd_kv_get(&kv, kv.pairs[0].key), "replaced") == 0,
                    "vd_kv_set did not replace");
    }
    size_t before = kv.count;
    if (!vd_kv_get(&kv, "fuzz-new-key")) {
        rc = vd_kv_set(&kv, "fuzz-new-key", "v");
        FUZZ_ASSERT(rc == 0 && kv.count == before + 1, "vd_kv_set did not append");
    }
    free(printed);
    vd_kv_free(&kv);
}

/* Parse the optional header line; returns the option text. */
static const char *parse_header(char *text, const char **format, uint64_t *size, uint32_t *flags)
{
    *format = "qcow2";
    *size = 1u << 20;
    *flags = 0;
    char *nl = strchr(text, '\n');
    if (!nl)
        return text;
    *nl = '\0';
    char *save = NULL, *tok = strtok_r(text, " ", &save);
    if (tok && vd_backend_find(tok))
        *format = tok;
    char *end;
    if (tok && (tok = strtok_r(NULL, " ", &save))) {
        uint64_t n = strtoull(tok, &end, 0);
        if (end != tok) /* no number: keep the default */
            *size = n;
    }
    if (tok && (tok = strtok_r(NULL, " ", &save)))
        *flags = (uint32_t)strtoul(tok, NULL, 0) & (VD_CREATE_EXCL | VD_CREATE_UNSAFE_BACKING);
    return nl + 1;
}

static bool zeroes(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* An image vd_create() made must open, have the right size, check clean and read back. */
static void verify_created(const char *format, uint64_t size, uint32_t flags)
{
    vd_image *img;
    vd_open_opts o = VD_OPEN_OPTS_INIT;
    o.format = format;
    o.flags = VD_OPEN_NO_LOCK;
    int rc = vd_open_ext(&img, NEW_IMAGE, &o);
    if (rc < 0 && (flags & VD_CREATE_UNSAFE_BACKING)) {
        o.flags |= VD_OPEN_NO_BACKING; /* an unchecked backing file may be anything */
        rc = vd_open_ext(&img, NEW_IMAGE, &o);
    }
    FUZZ_ASSERT(rc == 0, "the image vd_create() just made does not open: %s", vd_errmsg());
    vd_info info = VD_INFO_INIT;
    FUZZ_ASSERT(vd_get_info(img, &info) == 0, "vd_get_info");
    if (size)
        FUZZ_ASSERT(info.virtual_size == ((size + 511) & ~511ull),
                    "created with size %llu, opens with %llu", (unsigned long long)size,
                    (unsigned long long)info.virtual_size);
    vd_check_result res = VD_CHECK_RESULT_INIT;
    rc = vd_check(img, 0, &res, NULL, NULL);
    fuzz_check_rc(rc, "vd_check");
    if (rc == 0)
        FUZZ_ASSERT(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0,
                    "a new image checks with %llu corruptions, %llu leaks, %llu check errors",
                    (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                    (unsigned long long)res.check_errors);
    else
        FUZZ_ASSERT(rc == VD_EUNSUPPORTED, "vd_check of a new image failed: %s", vd_errmsg());
    uint64_t len = info.virtual_size < (4u << 20) ? info.virtual_size : (4u << 20);
    uint8_t *buf = malloc(len ? (size_t)len : 1);
    FUZZ_ASSERT(buf, "out of memory");
    rc = vd_read(img, 0, buf, (size_t)len, 0);
    FUZZ_ASSERT(rc == 0, "reading a new image failed: %s", vd_errmsg());
    if (!info.backing_file)
        FUZZ_ASSERT(zeroes(buf, (size_t)len), "a new image without a backing file is not zeroed");
    free(buf);
    rc = vd_close(img);
    FUZZ_ASSERT(rc == 0, "vd_close: %s", vd_errmsg());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    FUZZ_ASSERT(text, "out of memory");
    memcpy(text, data, size);
    text[size] = '\0';

    fuzz_kv(text); /* the whole input, header line included */

    const char *format;
    uint64_t vsize;
    uint32_t flags;
    const char *options = parse_header(text, &format, &vsize, &flags);
    fuzz_kv(options);

    for (size_t i = 0;; i++) {
        const char *name = NULL, *help = NULL, *dflt = NULL;
        int rc = vd_format_option(format, i, &name, &help, &dflt);
        if (rc == VD_ENOENT)
            break;
        FUZZ_ASSERT(rc == 0 && name && help, "vd_format_option(%s, %zu): %d", format, i, rc);
    }

    memfile_add_scratch(NEW_IMAGE, SCRATCH_CAP);
    memfile_add_scratch(DATA_FILE, SCRATCH_CAP);
    memfile_add_readonly(BASE_QCOW2, base_qcow2, base_qcow2_len);
    memfile_add_readonly(BASE_RAW, base_raw, base_raw_len);
    int rc = vd_create(NEW_IMAGE, format, vsize, options, flags);
    fuzz_check_rc(rc, "vd_create");
    FUZZ_ASSERT(memfile_open_count() == 0, "vd_create left %zu files open", memfile_open_count());
    if (rc == 0)
        verify_created(format, vsize, flags);
    memfile_clear();
    free(text);
    return 0;
}
