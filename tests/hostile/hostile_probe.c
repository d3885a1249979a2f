/*
 * hostile_probe: open one (possibly hostile) image through libvdisk and use
 * it every way a reader would, then print what happened as one JSON object.
 *
 *   hostile_probe [--rw] [--confined] [--no-backing] [--dump FILE] [--as-limit MIB] IMAGE
 *
 * Read-only (the default): open, walk its backing chain, vd_check() it,
 * read the whole virtual disk (or, above 256 MiB, a fixed sample of it),
 * walk vd_block_status() over all of it, list its snapshots, close.
 * --rw: open read-write and close again, nothing else (the image must not
 * change unless it was a valid one). --dump writes the bytes read to FILE.
 * --as-limit caps the address space, so that a runaway allocation fails
 * instead of exhausting the machine (not under sanitizers).
 *
 * Library errors are results, not failures: the exit status is 0 whenever
 * the program got to the end (2 for bad usage). A crash, a sanitizer report
 * or a hang is what the test looks for.
 */
#include <libvdisk/libvdisk.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define FULL_READ_LIMIT (256ull << 20)
#define CHUNK (1u << 20)
#define MAX_EXTENTS 200000u

static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* The first error of a kind, kept with its message. */
struct first_error {
    int rc;
    unsigned count;
    char msg[512];
};

static void note(struct first_error *e, int rc)
{
    if (rc >= 0)
        return;
    if (!e->count++) {
        e->rc = rc;
        snprintf(e->msg, sizeof e->msg, "%s", vd_errmsg());
    }
}

static void print_error(const char *key, const struct first_error *e)
{
    printf(", \"%s_errors\": %u, \"%s_rc\": %d, \"%s_msg\": ", key, e->count, key, e->rc, key);
    json_string(e->msg);
}

int main(int argc, char **argv)
{
    uint32_t flags = 0;
    int rw = 0;
    const char *path = NULL, *dump = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rw"))
            rw = 1, flags |= VD_OPEN_RDWR;
        else if (!strcmp(argv[i], "--confined"))
            flags |= VD_OPEN_CONFINED;
        else if (!strcmp(argv[i], "--no-backing"))
            flags |= VD_OPEN_NO_BACKING;
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else if (!strcmp(argv[i], "--as-limit") && i + 1 < argc) {
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = (rlim_t)strtoull(argv[++i], NULL, 10) << 20;
            if (setrlimit(RLIMIT_AS, &rl) < 0) {
                perror("setrlimit");
                return 2;
            }
        }
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else {
            fprintf(stderr, "usage: %s [--rw] [--confined] [--no-backing] [--dump FILE] "
                    "[--as-limit MIB] IMAGE\n", argv[0]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: %s [--rw] [--confined] [--no-backing] [--dump FILE] "
                "[--as-limit MIB] IMAGE\n", argv[0]);
        return 2;
    }

    vd_image *img = NULL;
    int rc = vd_open(&img, path, NULL, flags);
    printf("{\"open_rc\": %d, \"open_msg\": ", rc);
    json_string(rc < 0 ? vd_errmsg() : "");
    if (rc < 0)
        goto out;

    printf(", \"format\": ");
    json_string(vd_get_format(img));
    vd_info info = VD_INFO_INIT;
    rc = vd_get_info(img, &info);
    printf(", \"info_rc\": %d, \"dirty\": %d, \"backing\": ", rc, rc < 0 ? -1 : info.dirty);
    json_string(rc < 0 ? NULL : info.backing_file);

    uint64_t size = 0;
    rc = vd_get_size(img, &size);
    printf(", \"size_rc\": %d, \"size\": %llu", rc, (unsigned long long)size);

    if (rw)
        goto close;

    /* the chain, as far as it goes */
    unsigned depth = 0;
    for (vd_image *b = vd_get_backing(img); b && depth < 100000; b = vd_get_backing(b))
        depth++;
    printf(", \"chain_depth\": %u", depth);

    /* check, on a handle nothing has been read through yet */
    vd_check_result cr = VD_CHECK_RESULT_INIT;
    rc = vd_check(img, 0, &cr, NULL, NULL);
    printf(", \"check_rc\": %d, \"check_msg\": ", rc);
    json_string(rc < 0 ? vd_errmsg() : "");
    printf(", \"corruptions\": %llu, \"leaks\": %llu, \"check_errors\": %llu",
           (unsigned long long)cr.corruptions, (unsigned long long)cr.leaks,
           (unsigned long long)cr.check_errors);

    /* read everything, or a sample of a big disk */
    FILE *out = dump ? fopen(dump, "wb") : NULL;
    char *buf = malloc(CHUNK);
    struct first_error read_err = {0};
    unsigned long long bytes_read = 0;
    if (!buf)
        return 3;
    int sampled = size > FULL_READ_LIMIT;
    unsigned chunks = sampled ? 66 : (unsigned)((size + CHUNK - 1) / CHUNK);
    for (unsigned i = 0; i < chunks; i++) {
        uint64_t off, len;
        if (!sampled) {
            off = (uint64_t)i * CHUNK;
            len = size - off < CHUNK ? size - off : CHUNK;
        } else if (i == 0) {
            off = 0, len = CHUNK;
        } else if (i == 1) {
            off = size - CHUNK, len = CHUNK;
        } else {
            len = 65536;
            off = (size / 64 * (i - 2)) / 512 * 512;
            if (off + len > size)
                off = size - len;
        }
        rc = vd_read(img, off, buf, len, 0);
        note(&read_err, rc);
        if (rc >= 0) {
            bytes_read += len;
            if (out)
                fwrite(buf, 1, len, out);
        }
    }
    free(buf);
    if (out)
        fclose(out);
    printf(", \"sampled\": %d, \"bytes_read\": %llu", sampled, bytes_read);
    print_error("read", &read_err);

    /* block status over the whole disk */
    struct first_error bs_err = {0};
    unsigned extents = 0, bad_extents = 0;
    uint64_t off = 0;
    while (off < size && extents < MAX_EXTENTS) {
        vd_extent ext;
        rc = vd_block_status(img, off, size - off, &ext, 0);
        if (rc < 0) {
            note(&bs_err, rc);
            break;
        }
        extents++;
        if (ext.offset != off || ext.length == 0 || ext.length > size - off) {
            bad_extents++; /* an answer that does not describe [off, size) */
            break;
        }
        off += ext.length;
    }
    printf(", \"extents\": %u, \"bad_extents\": %u, \"bs_end\": %llu", extents, bad_extents,
           (unsigned long long)off);
    print_error("bs", &bs_err);

    /* snapshots */
    size_t count = 0;
    rc = vd_snapshot_count(img, &count);
    unsigned listed = 0;
    for (size_t i = 0; rc >= 0 && i < count && i < 100000; i++) {
        vd_snapshot_info si = VD_SNAPSHOT_INFO_INIT;
        if (vd_snapshot_get(img, i, &si) >= 0 && si.id && si.name)
            listed++;
    }
    printf(", \"snapshots_rc\": %d, \"snapshots\": %zu, \"snapshots_listed\": %u", rc, count,
           listed);

    /* properties */
    unsigned props = 0;
    const char *key, *value;
    int type;
    while (props < 1000 && vd_get_property(img, props, &key, &value, &type) >= 0)
        props++;
    printf(", \"properties\": %u", props);

close:
    rc = vd_close(img);
    printf(", \"close_rc\": %d, \"close_msg\": ", rc);
    json_string(rc < 0 ? vd_errmsg() : "");
out:;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf(", \"maxrss_kb\": %ld}\n", ru.ru_maxrss);
    return 0;
}
