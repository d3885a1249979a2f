/* vdisk bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [-i aio] [-n] [--no-drain]
 *             [-o offset] [--pattern=N] [-q] [-s size] [-S step] [-t cache] [-w] [-U] [--safe]
 *             filename */
#include "cli.h"
#include "size.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_args {
    unsigned long count, depth, pattern, flush_interval;
    uint64_t offset, size, step;
    bool write, drain_on_flush, native_aio;
    const char *format, *cache;
    uint32_t open_flags; /* VD_OPEN_NO_LOCK with -U, VD_OPEN_SAFE with --safe */
    const char *filename;
};

/*
 * The run: depth threads share one handle, each with one request in flight,
 * as qemu-img keeps depth requests in flight. With a flush interval and
 * draining (the default), requests are handed out in batches of that many
 * and each batch ends, all requests done, with a flush; with --no-drain the
 * thread that completes every interval-th request flushes while the others
 * go on.
 */
struct bench {
    const struct bench_args *args;
    vd_image *img;
    uint64_t image_size;
    pthread_mutex_t lock;
    pthread_cond_t batch_open;
    unsigned long issued, done, batch_end; /* requests; batch_end: the last one handed out + 1 */
    uint64_t next_offset;
    int error;                              /* the first failure, or 0 */
};

/* The offset of the next request, advanced as qemu-img advances it. Under the lock. */
static uint64_t take_offset(struct bench *b)
{
    uint64_t offset = b->next_offset, size = b->args->size;
    b->next_offset += b->args->step;
    b->next_offset = b->image_size <= size ? 0 : b->next_offset % (b->image_size - size);
    return offset;
}

static int flush_image(struct bench *b)
{
    return vd_flush(b->img, 0);
}

/* Record a request's end (under the lock); flush where the interval says. */
static void finish_request(struct bench *b, int rc)
{
    const struct bench_args *a = b->args;
    b->done++;
    if (rc < 0 && !b->error)
        b->error = rc;
    bool interval_end = a->flush_interval && b->done % a->flush_interval == 0;
    if (a->drain_on_flush && b->done == b->batch_end) {
        /* the batch is drained: flush alone, then open the next one */
        if (interval_end && !b->error && (rc = flush_image(b)) < 0)
            b->error = rc;
        b->batch_end = b->batch_end + a->flush_interval < a->count
                           ? b->batch_end + a->flush_interval
                           : a->count;
        pthread_cond_broadcast(&b->batch_open);
    } else if (!a->drain_on_flush && interval_end && !b->error) {
        pthread_mutex_unlock(&b->lock);
        rc = flush_image(b);
        pthread_mutex_lock(&b->lock);
        if (rc < 0 && !b->error)
            b->error = rc;
    }
}

static void *bench_worker(void *opaque)
{
    struct bench *b = opaque;
    const struct bench_args *a = b->args;
    uint8_t *buf = malloc(a->size ? a->size : 1);
    if (buf)
        memset(buf, (int)a->pattern, a->size);
    pthread_mutex_lock(&b->lock);
    if (!buf && !b->error)
        b->error = VD_ENOMEM;
    for (;;) {
        while (b->issued == b->batch_end && b->issued < a->count && !b->error)
            pthread_cond_wait(&b->batch_open, &b->lock);
        if (b->issued >= a->count || b->error)
            break;
        b->issued++;
        uint64_t offset = take_offset(b);
        pthread_mutex_unlock(&b->lock);
        int rc = a->write ? vd_write(b->img, offset, buf, a->size, 0)
                          : vd_read(b->img, offset, buf, a->size, 0);
        pthread_mutex_lock(&b->lock);
        finish_request(b, rc);
    }
    pthread_cond_broadcast(&b->batch_open); /* an error ends the others' waits too */
    pthread_mutex_unlock(&b->lock);
    free(buf);
    return NULL;
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static int run_requests(struct bench *b)
{
    const struct bench_args *a = b->args;
    unsigned long nthreads = a->depth < a->count ? a->depth : a->count;
    pthread_t *threads = calloc(nthreads ? nthreads : 1, sizeof *threads);
    if (!threads)
        return cli_error("out of memory");
    b->batch_end = a->drain_on_flush && a->flush_interval && a->flush_interval < a->count
                       ? a->flush_interval
                       : a->count;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    unsigned long started = 0;
    for (; started < nthreads; started++) {
        if (pthread_create(&threads[started], NULL, bench_worker, b) != 0) {
            pthread_mutex_lock(&b->lock);
            b->error = b->error ? b->error : VD_ENOMEM;
            pthread_cond_broadcast(&b->batch_open);
            pthread_mutex_unlock(&b->lock);
            break;
        }
    }
    for (unsigned long i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    if (b->error)
        return cli_lib_error(b->error, "Failed request");
    printf("Run completed in %3.3f seconds.\n", seconds_since(&start));
    return EXIT_SUCCESS;
}

static int bench(const struct bench_args *a)
{
    uint32_t cache = 0;
    if (a->cache && !cli_parse_cache_mode(a->cache, &cache))
        return cli_error("Invalid cache mode");
    if (!a->write && a->flush_interval)
        return cli_error("--flush-interval is only available in write tests");
    if (a->flush_interval && a->flush_interval < a->depth)
        return cli_error("Flush interval can't be smaller than depth");
    if (a->native_aio && !(cache & VD_OPEN_DIRECT))
        return cli_error("Could not open '%s': aio=native was specified, but it requires "
                         "cache.direct=on, which was not specified.", a->filename);
    uint32_t flags = a->open_flags | (a->write ? VD_OPEN_RDWR : 0) | cache;
    struct bench b = { .args = a, .next_offset = a->offset };
    if (!(b.img = cli_open_image(a->filename, a->format, flags)))
        return EXIT_FAILURE;
    int rc = vd_get_size(b.img, &b.image_size);
    int status = rc < 0 ? cli_lib_error(rc, "%s", a->filename) : EXIT_SUCCESS;
    if (status == EXIT_SUCCESS) {
        printf("Sending %lu %s requests, %" PRIu64 " bytes each, %lu in parallel (starting at "
               "offset %" PRIu64 ", step size %" PRIu64 ")\n", a->count,
               a->write ? "write" : "read", a->size, a->depth, a->offset, a->step);
        if (a->flush_interval)
            printf("Sending flush every %lu requests\n", a->flush_interval);
        pthread_mutex_init(&b.lock, NULL);
        pthread_cond_init(&b.batch_open, NULL);
        status = run_requests(&b);
        pthread_cond_destroy(&b.batch_open);
        pthread_mutex_destroy(&b.lock);
    }
    if ((rc = vd_close(b.img)) < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "%s", a->filename);
    return status;
}

/* An unsigned number as qemu_strtoul() takes it (decimal, 0x hex or 0 octal), up to max. */
static bool parse_ulong(const char *text, unsigned long min, unsigned long max,
                        unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 0);
    if (errno || end == text || *end || strchr(text, '-') || value < min || value > max)
        return false;
    *out = value;
    return true;
}

static bool parse_aio(const char *mode, bool *native)
{
    if (strcmp(mode, "native") == 0)
        *native = true;
    else if (strcmp(mode, "threads") == 0 || strcmp(mode, "io_uring") == 0)
        *native = false;
    else
        return false;
    return true;
}

enum { OPT_FLUSH_INTERVAL = 256, OPT_PATTERN, OPT_NO_DRAIN };

static int parse_option(int opt, struct bench_args *a, char **argv)
{
    switch (opt) {
    case 'c':
        return parse_ulong(optarg, 0, INT_MAX, &a->count)
                   ? EXIT_SUCCESS : cli_error("Invalid request count specified");
    case 'd': /* 0 would leave nothing in flight (qemu-img then waits forever) */
        return parse_ulong(optarg, 1, INT_MAX, &a->depth)
                   ? EXIT_SUCCESS : cli_error("Invalid queue depth specified");
    case 'f':
        a->format = optarg;
        return EXIT_SUCCESS;
    case 'n':
        a->native_aio = true;
        return EXIT_SUCCESS;
    case 'i':
        return parse_aio(optarg, &a->native_aio) ? EXIT_SUCCESS
                                                 : cli_error("Invalid aio option: %s", optarg);
    case 'o':
        return size_parse_arg("offset", optarg, INT64_MAX, &a->offset) ? EXIT_SUCCESS
                                                                        : EXIT_FAILURE;
    case 'q': /* qemu-img prints its two lines all the same */
        return EXIT_SUCCESS;
    case 's':
        return size_parse_arg("buffer size", optarg, INT_MAX, &a->size) ? EXIT_SUCCESS
                                                                         : EXIT_FAILURE;
    case 'S':
        return size_parse_arg("step_size", optarg, INT_MAX, &a->step) ? EXIT_SUCCESS
                                                                       : EXIT_FAILURE;
    case 't':
        a->cache = optarg;
        return EXIT_SUCCESS;
    case 'w':
        a->write = true;
        return EXIT_SUCCESS;
    case 'U':
        a->open_flags |= VD_OPEN_NO_LOCK;
        return EXIT_SUCCESS;
    case CLI_OPT_SAFE:
        a->open_flags |= VD_OPEN_SAFE;
        return EXIT_SUCCESS;
    case OPT_PATTERN:
        return parse_ulong(optarg, 0, 0xff, &a->pattern)
                   ? EXIT_SUCCESS : cli_error("Invalid pattern byte specified");
    case OPT_FLUSH_INTERVAL:
        return parse_ulong(optarg, 0, INT_MAX, &a->flush_interval)
                   ? EXIT_SUCCESS : cli_error("Invalid flush interval specified");
    case OPT_NO_DRAIN:
        a->drain_on_flush = false;
        return EXIT_SUCCESS;
    default:
        return cli_option_fallback(&cmd_bench, opt, argv);
    }
}

static int run_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP,
        CLI_OPTION_FORCE_SHARE,
        CLI_OPTION_SAFE,
        { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { NULL, 0, NULL, 0 },
    };
    /* qemu-img's defaults */
    struct bench_args a = { .count = 75000, .depth = 64, .size = 4096, .drain_on_flush = true };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_options, NULL)) != -1) {
        bool help = opt == 'h';
        int status = parse_option(opt, &a, argv);
        if (status != EXIT_SUCCESS || help)
            return status;
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a.filename = argv[optind];
    if (!a.step)
        a.step = a.size;
    return bench(&a);
}

const struct cli_command cmd_bench = {
    .name = "bench",
    .synopsis = "[-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] "
                "[--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                "[-S step_size] [-t cache] [-w] [-U] [--safe] filename",
    .summary = "run a simple read or write benchmark on an image",
    .options =
        "  -c count        requests to send (default 75000)\n"
        "  -d depth        requests in flight at once, one thread each, sharing one\n"
        "                  handle (default 64)\n"
        "  -f fmt          image format (default: probe the file)\n"
        "  --flush-interval=N\n"
        "                  with -w: flush after every N requests (N >= depth); the\n"
        "                  requests in flight finish first unless --no-drain\n"
        "  -i aio, -n      accepted as qemu-img takes them (threads, native, io_uring;\n"
        "                  native needs -t none or directsync); I/O runs in threads\n"
        "  --no-drain      flush without waiting for the requests in flight\n"
        "  -o offset       offset of the first request (default 0)\n"
        "  --pattern=N     the byte written with -w (default 0)\n"
        "  -q              accepted; the two lines are printed all the same\n"
        "  -s buffer_size  bytes per request (default 4096)\n"
        "  -S step_size    offset increment between requests (default: the buffer\n"
        "                  size); offsets wrap around before the image's end\n"
        "  -t cache        cache mode (default writeback; unsafe never syncs)\n"
        "  -w              write instead of read\n"
        "  -U, --force-share\n"
        "                  open without taking locks (read tests only)\n"
        CLI_HELP_SAFE
        "  filename        the image\n",
    .run = run_bench,
    .image_opts = true,
};
