/* vdisk convert [-c] [-p] [-q] [-U] [--safe] [--image-opts] [--target-image-opts] [-n]
 *               [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]] [--bitmap name] [-W]
 *               [-m num] [-f fmt] [-O fmt]
 *               [-B backing [-F backing_fmt]] [-o options] [-l snapshot_param] [-S size]
 *               [-t cache] [-T src_cache] src dst
 * The work is vd_convert()'s; this parses qemu-img's options, opens the source (and finds
 * the snapshot -l names, as qemu-img looks it up) and shows the progress. */
#include "cli.h"
#include "progress.h"
#include "size.h"
#include "snapshots.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* qemu-img's bounds for -S: whole sectors, at most its largest buffer */
#define SECTOR_SIZE 512

enum { OPT_TARGET_IS_ZERO = 256, OPT_TARGET_IMAGE_OPTS, OPT_BITMAPS, OPT_SKIP_BROKEN_BITMAPS,
       OPT_BITMAP };

struct convert_args {
    const char *src_format;
    const char *out_format; /* -O, or NULL (raw; with --target-image-opts its driver) */
    bool target_image_opts; /* dst is an option string (with -n only) */
    char *options;          /* joined -o arguments, or NULL */
    bool progress, quiet;
    uint64_t sparse_size;
    uint32_t dst_cache;     /* -t's flags (vd_cache_mode_flags()); default unsafe: VD_OPEN_NO_FLUSH */
    uint32_t open_flags;    /* for the source (-T's flags); with --safe VD_OPEN_SAFE, also for
                               the destination */
    uint32_t convert_flags; /* VD_CONVERT_* of -c, -n, --target-is-zero, -W,
                               --bitmaps, --skip-broken-bitmaps */
    const char *bitmap;     /* --bitmap: copy only what it marks dirty, or NULL */
    unsigned parallel;      /* -m, or 0 */
    const char *backing;    /* -B, or NULL */
    const char *backing_fmt; /* -F, or NULL */
    struct snapshot_param snapshot; /* -l or -s: convert a snapshot */
    const char *src, *dst;
};

/* vd_convert()'s progress callback: qemu-img's display; never cancels. */
static int show_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_update(ctx, done, total);
    return 0;
}

/*
 * With --bitmaps, the source's inconsistent bitmaps as qemu-img reports
 * them, last in the directory first: without --skip-broken-bitmaps the
 * first refuses the conversion (before anything is created; vd_convert()
 * would refuse it too, in the library's words); with it, after the copy,
 * each one skipped is named in a warning. Returns false after a refusal.
 */
static bool report_broken_bitmaps(const struct convert_args *a, vd_image *src, bool copied)
{
    bool skip = a->convert_flags & VD_CONVERT_SKIP_BROKEN_BITMAPS;
    size_t count;
    if (!(a->convert_flags & VD_CONVERT_BITMAPS) || copied != skip || vd_bitmap_count(src, &count) < 0)
        return true;
    for (size_t i = count; i-- > 0;) {
        vd_bitmap_info b = VD_BITMAP_INFO_INIT;
        if (vd_bitmap_get(src, i, &b) < 0 || !(b.flags & VD_BITMAP_INCONSISTENT))
            continue;
        if (skip) {
            cli_error("warning: Skipping inconsistent bitmap '%s'", b.name);
            continue;
        }
        cli_error("Cannot copy inconsistent bitmap '%s'", b.name);
        fputs("Try --skip-broken-bitmaps, or use '" CLI_NAME " bitmap --remove' to delete it\n", stderr);
        return false;
    }
    return true;
}

static int copy_to_destination(const struct convert_args *a, vd_image *src, const char *dst,
                               const char *dst_format)
{
    struct progress progress;
    progress_start(&progress, a->progress && !a->quiet);
    vd_convert_opts opts = VD_CONVERT_OPTS_INIT;
    opts.flags = a->convert_flags;
    opts.src = src;
    opts.dst_path = dst;
    opts.dst_format = dst_format;
    opts.dst_options = a->options;
    opts.dst_open_flags = a->dst_cache | (a->open_flags & VD_OPEN_SAFE);
    opts.backing_file = a->backing;
    opts.backing_format = a->backing_fmt;
    opts.sparse_size = a->sparse_size;
    opts.parallel = a->parallel;
    opts.bitmap = a->bitmap;
    if (progress.enabled) {
        opts.progress = show_progress;
        opts.progress_ctx = &progress;
    }
    if (!report_broken_bitmaps(a, src, false))
        return EXIT_FAILURE;
    int rc = vd_convert(&opts);
    progress_finish(&progress, rc == 0);
    if (rc < 0) /* the library's message says what failed and names the file */
        return cli_error("%s", *vd_errmsg() ? vd_errmsg() : vd_strerror(rc));
    report_broken_bitmaps(a, src, true);
    return EXIT_SUCCESS;
}

/*
 * The format of an existing destination named by --target-image-opts
 * without driver=: probed, as qemu-img probes it. NULL (reported) on failure.
 */
static char *probe_target_format(const char *path, const char *shown)
{
    vd_image *img = cli_open_path(path, NULL, VD_OPEN_NO_LOCK | VD_OPEN_NO_BACKING);
    if (!img)
        return NULL;
    vd_info info = VD_INFO_INIT;
    char *format = vd_get_info(img, &info) == 0 ? strdup(info.format) : NULL;
    if (!format)
        cli_error("Could not open '%s': cannot tell its format", shown);
    vd_close(img);
    return format;
}

static int convert_from(const struct convert_args *a, vd_image *src)
{
    if (!a->target_image_opts)
        return copy_to_destination(a, src, a->dst, a->out_format);
    struct cli_image_opts target;
    int status = EXIT_FAILURE;
    if (!cli_parse_image_opts(a->dst, &target))
        goto out;
    /* the destination is written, and vd_convert() always locks it */
    if (target.flags & VD_OPEN_NO_LOCK) {
        cli_error("Could not open '%s': force-share=on can only be used with read-only images",
                  a->dst);
        goto out;
    }
    if (!target.driver && !(target.driver = probe_target_format(target.filename, a->dst)))
        goto out;
    status = copy_to_destination(a, src, target.filename, target.driver);
out:
    cli_image_opts_free(&target);
    return status;
}

static int convert(const struct convert_args *a)
{
    if (a->out_format && !cli_format_known(a->out_format))
        return cli_error("Unknown file format '%s'", a->out_format);
    vd_image *src = snapshot_param_open(a->src, a->src_format, a->open_flags, &a->snapshot);
    if (!src)
        return EXIT_FAILURE;
    int status = convert_from(a, src);
    vd_close(src);
    return status;
}

static bool parse_sparse_size(const char *text, uint64_t *out)
{
    uint64_t size;
    if (!size_parse_arg("buffer size for sparse output", text, INT64_MAX, &size))
        return false;
    if (size % SECTOR_SIZE || size > VD_CONVERT_MAX_SPARSE_SIZE) {
        cli_error("Invalid buffer size for sparse output specified. Valid sizes are multiples "
                  "of %u up to %" PRIu64 ". Select 0 to disable sparse detection (fully "
                  "allocates output).", SECTOR_SIZE, VD_CONVERT_MAX_SPARSE_SIZE);
        return false;
    }
    *out = size;
    return true;
}

/* -m: chunks in flight, as qemu-img's coroutines. */
static bool parse_parallel(const char *text, unsigned *out)
{
    char *end;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (errno || end == text || *end || n < 1 || n > VD_CONVERT_MAX_PARALLEL) {
        cli_error("Invalid number of coroutines. Allowed number of coroutines is between 1 "
                  "and %d", VD_CONVERT_MAX_PARALLEL);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

static int parse_and_convert(int argc, char **argv, struct convert_args *a)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, CLI_OPTION_SAFE,
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN_BITMAPS },
        { "bitmap", required_argument, NULL, OPT_BITMAP },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hcf:O:o:B:F:l:s:S:pqUt:T:nm:W", long_options, NULL)) !=
           -1) {
        switch (opt) {
        case 'f':
            a->src_format = optarg;
            break;
        case 'O':
            a->out_format = optarg;
            break;
        case 'o':
            if (!cli_append_options(&a->options, optarg))
                return cli_error("out of memory");
            break;
        case 'B':
            a->backing = optarg;
            break;
        case 'F':
            a->backing_fmt = optarg;
            break;
        case 'l':
            if (!snapshot_param_parse(optarg, &a->snapshot))
                return EXIT_FAILURE;
            break;
        case 's': /* the older qemu-img spelling of -l ID_OR_NAME */
            if (!snapshot_param_parse_id_or_name(optarg, &a->snapshot))
                return EXIT_FAILURE;
            break;
        case 'S':
            if (!parse_sparse_size(optarg, &a->sparse_size))
                return EXIT_FAILURE;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'n':
            a->convert_flags |= VD_CONVERT_EXISTING;
            break;
        case OPT_TARGET_IS_ZERO:
            a->convert_flags |= VD_CONVERT_TARGET_IS_ZERO;
            break;
        case OPT_TARGET_IMAGE_OPTS:
            a->target_image_opts = true;
            break;
        case OPT_BITMAPS:
            a->convert_flags |= VD_CONVERT_BITMAPS;
            break;
        case OPT_SKIP_BROKEN_BITMAPS:
            a->convert_flags |= VD_CONVERT_SKIP_BROKEN_BITMAPS;
            break;
        case OPT_BITMAP:
            a->bitmap = optarg;
            break;
        case 'm':
            if (!parse_parallel(optarg, &a->parallel))
                return EXIT_FAILURE;
            break;
        case 'W':
            a->convert_flags |= VD_CONVERT_OUT_OF_ORDER;
            break;
        case 'c':
            a->convert_flags |= VD_CONVERT_COMPRESS;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'U':
            a->open_flags |= VD_OPEN_NO_LOCK;
            break;
        case CLI_OPT_SAFE:
            a->open_flags |= VD_OPEN_SAFE;
            break;
        case 't':
            if (!cli_parse_cache_mode(optarg, &a->dst_cache))
                return cli_error("Invalid cache option: %s", optarg);
            break;
        case 'T': /* the source is only read: what matters is O_DIRECT or not */
            if (!cli_parse_cache_mode(optarg, &a->open_flags))
                return cli_error("Invalid source cache option: %s", optarg);
            break;
        default:
            return cli_option_fallback(&cmd_convert, opt, argv);
        }
    }
    /* qemu-img's checks, in its order */
    if (a->target_image_opts && !(a->convert_flags & VD_CONVERT_EXISTING))
        return cli_error("--target-image-opts requires use of -n flag");
    if (a->target_image_opts && a->out_format)
        return cli_error("--image-opts and --format are mutually exclusive");
    if (!a->target_image_opts && !a->out_format)
        a->out_format = "raw";
    if ((a->convert_flags & VD_CONVERT_SKIP_BROKEN_BITMAPS) && !(a->convert_flags & VD_CONVERT_BITMAPS))
        return cli_error("Use of --skip-broken-bitmaps requires --bitmaps");
    if (cli_options_want_help(a->options))
        return cli_print_format_options(a->out_format ? a->out_format : "raw");
    if (argc - optind < 2)
        return cli_usage_error("Expecting a source and a destination file name");
    if (argc - optind > 2)
        return cli_usage_error("Unexpected argument: %s", argv[optind + 2]);
    a->src = argv[optind];
    a->dst = argv[optind + 1];
    return convert(a);
}

static int run_convert(int argc, char **argv)
{
    vd_convert_opts defaults = VD_CONVERT_OPTS_INIT;
    struct convert_args args = { .sparse_size = defaults.sparse_size, .dst_cache = VD_OPEN_NO_FLUSH };
    int status = parse_and_convert(argc, argv, &args);
    free(args.options);
    snapshot_param_free(&args.snapshot);
    return status;
}

const struct cli_command cmd_convert = {
    .name = "convert",
    .synopsis = "[-c] [-p] [-q] [-U] [--safe] [--image-opts] [--target-image-opts] [-n] "
                "[--target-is-zero] [--bitmaps [--skip-broken-bitmaps]] [--bitmap name] [-W] "
                "[-m num_coroutines] "
                "[-f fmt] [-O output_fmt] "
                "[-B backing_file [-F backing_fmt]] "
                "[-o options] [-l snapshot_param] [-S sparse_size] [-t cache] [-T src_cache] "
                "filename output_filename",
    .summary = "copy a disk image, possibly to another format",
    .options =
        "  -f fmt          format of the source (default: probe the file)\n"
        "  -c              store every data cluster compressed (qcow2: zlib, or\n"
        "                  -o compression_type=zstd), compressed on a thread per core\n"
        "  -O output_fmt   format of the destination (default: raw)\n"
        "  -B backing_file make the destination an overlay of this image (relative to\n"
        "                  the destination's directory), holding only what differs\n"
        "                  from it; the same as -o backing_file=...\n"
        "  -F backing_fmt  format of the backing file (default: probe it)\n"
        "  -o options      create options of the destination, key=value[,...];\n"
        "                  '-o help' lists them\n"
        "  -l snapshot_param\n"
        "                  convert an internal snapshot of the source:\n"
        "                  snapshot.id=ID[,snapshot.name=NAME], snapshot.name=NAME,\n"
        "                  or an id or else a name; -s ID_OR_NAME is the same\n"
        "  -S sparse_size  leave all-zero runs of this many bytes unwritten so the\n"
        "                  destination stays sparse (default 4k; a multiple of 512 up\n"
        "                  to 16M; 0 writes every byte and fully allocates the output);\n"
        "                  not for an overlay, which is compared cluster by cluster\n"
        "  -t cache        cache mode of the destination: 'unsafe' (default) never\n"
        "                  syncs it; none, writeback, writethrough and directsync sync\n"
        "                  it to stable storage at the end; none and directsync write\n"
        "                  it with O_DIRECT, writethrough and directsync every write FUA\n"
        "  -T src_cache    cache mode of the source: none and directsync read with O_DIRECT\n"
        "  -n              write into an existing destination instead of creating it;\n"
        "                  it must be at least as large as the source, and -o cannot\n"
        "                  be given; on failure it is left as written so far\n"
        "  --target-image-opts\n"
        "                  with -n: output_filename is an option string, as the source's\n"
        "                  with --image-opts (driver=FMT,file.filename=PATH; without\n"
        "                  driver= the format is probed); -O cannot be given\n"
        "  --target-is-zero\n"
        "                  with -n: the destination reads as zeroes, so zero runs of\n"
        "                  the source are not written\n"
        "  --bitmaps       copy the source's persistent dirty bitmaps too; an\n"
        "                  inconsistent one (in use after a crash) refuses the copy\n"
        "  --skip-broken-bitmaps\n"
        "                  with --bitmaps: leave the inconsistent ones out, with a\n"
        "                  warning each\n"
        "  --bitmap name   copy only what this bitmap of the source marks dirty;\n"
        "                  with -B previous_backup, an incremental backup\n"
        "  -m num_coroutines\n"
        "                  chunks of the copy in flight, 1 to 16 (default 4)\n"
        "  -W              write chunks as soon as they are read, out of order; can be\n"
        "                  faster, but a qcow2 destination's cluster order then\n"
        "                  depends on timing\n"
        "  -p              show progress: the share of the source's data copied\n"
        "  -q              quiet: no progress\n"
        "  -U, --force-share\n"
        "                  open the source without taking locks\n"
        CLI_HELP_SAFE
        "                  (the source; the destination's -B backing file too)\n"
        "  filename        the source image; an overlay is read through its backing\n"
        "                  chain, so without -B the destination holds everything\n"
        "                  (flattened)\n"
        "  output_filename the destination; created, or overwritten if it exists (a\n"
        "                  destination this command created is removed if it fails)\n",
    .run = run_convert,
    .image_opts = true,
};
