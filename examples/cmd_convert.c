/* vdisk convert [-p] [-q] [-U] [--safe] [-f fmt] [-O fmt] [-B backing [-F backing_fmt]]
 *               [-o options] [-l snapshot_param] [-S size] [-t cache] [-T src_cache] src dst */
#include "cli.h"
#include "copy.h"
#include "size.h"
#include "snapshots.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* qemu-img's bounds for -S: whole sectors, at most its largest buffer */
#define SECTOR_SIZE 512
#define MAX_SPARSE_SIZE (16u << 20)
#define DEFAULT_SPARSE_SIZE 4096

struct convert_args {
    const char *src_format;
    const char *out_format;
    char *options;          /* joined -o arguments, or NULL */
    bool progress, quiet;
    size_t sparse_size;
    bool flush;             /* sync the destination at the end (-t: all modes but unsafe) */
    uint32_t open_flags;    /* for the source; with --safe VD_OPEN_SAFE, also for the destination */
    const char *backing;    /* -B, or NULL */
    const char *backing_fmt; /* -F, or NULL */
    /* -l: convert a snapshot, found by id and/or name; with snapshot_either by id or else name */
    char *snapshot_id, *snapshot_name;
    bool snapshot_either;
    const char *src, *dst;
};

/*
 * Create the destination; *created says whether the path is new, and so
 * ours to remove. vd_create() refuses a destination in use: the source, a
 * file of its chain (open here), or an image another process holds.
 */
static int create_destination(const struct convert_args *a, uint64_t size, bool *created)
{
    if (a->backing && !cli_format_has_option(a->out_format, "backing_file"))
        return cli_error("Backing file not supported for file format '%s'", a->out_format);
    uint32_t confined = (a->open_flags & VD_OPEN_SAFE) ? VD_CREATE_CONFINED : 0;
    int rc = vd_create(a->dst, a->out_format, size, a->options, VD_CREATE_EXCL | confined);
    *created = rc == 0;
    if (rc == VD_EEXIST) /* like qemu-img, overwrite an existing file */
        rc = vd_create(a->dst, a->out_format, size, a->options, confined);
    if (rc < 0)
        return cli_lib_error(rc, "%s: error while converting %s", a->dst, a->out_format);
    return EXIT_SUCCESS;
}

static int copy_to_destination(const struct convert_args *a, vd_image *src, uint64_t size)
{
    vd_image *dst = cli_open_image(a->dst, a->out_format,
                                   VD_OPEN_RDWR | (a->flush ? 0 : VD_OPEN_NO_FLUSH) |
                                   (a->open_flags & VD_OPEN_SAFE));
    if (!dst)
        return EXIT_FAILURE;
    /* an overlay (-B or -o backing_file) gets only what differs from its backing image */
    vd_info info = VD_INFO_INIT;
    vd_image *base = vd_get_backing(dst);
    int rc = base ? vd_get_info(dst, &info) : 0;
    if (rc < 0) {
        vd_close(dst);
        return cli_lib_error(rc, "%s", a->dst);
    }
    struct progress progress;
    progress_start(&progress, a->progress && !a->quiet);
    struct copy_params params = {
        .src = src, .dst = dst, .size = size, .sparse_block = a->sparse_size, .base = base,
        .compare_block = info.cluster_size ? info.cluster_size : DEFAULT_SPARSE_SIZE,
        .progress = &progress,
    };
    struct copy_error err;
    rc = copy_image(&params, &err);
    progress_finish(&progress, rc == 0);
    int close_rc = vd_close(dst); /* writes the destination out (and syncs it with flush) */
    if (rc < 0)
        return cli_error("error while %s at byte %" PRIu64 ": %s", err.action, err.offset,
                         err.message);
    if (close_rc < 0)
        return cli_lib_error(close_rc, "error while writing '%s'", a->dst);
    return EXIT_SUCCESS;
}

/* The id of the snapshot -l asks for, malloc'd; NULL (reported) if there is none such. */
static char *find_snapshot_id(const struct convert_args *a, vd_image *img)
{
    struct snapshot_list list;
    int rc = snapshot_list_load(img, &list);
    const vd_snapshot_info *sn =
        rc < 0 ? NULL
        : a->snapshot_either ? snapshot_list_find_id_or_name(&list, a->snapshot_id)
                             : snapshot_list_find(&list, a->snapshot_id, a->snapshot_name);
    char *id = sn ? strdup(sn->id) : NULL;
    snapshot_list_free(&list);
    if (rc < 0)
        cli_lib_error(rc, "Failed to load snapshot");
    else if (!sn)
        cli_error("Failed to load snapshot: Can't find snapshot");
    else if (!id)
        cli_error("out of memory");
    return id;
}

/* The source: the image, or with -l one of its snapshots (looked up as qemu-img does). */
static vd_image *open_source(const struct convert_args *a)
{
    vd_image *img = cli_open_image(a->src, a->src_format, a->open_flags);
    if (!img || (!a->snapshot_id && !a->snapshot_name))
        return img;
    char *id = find_snapshot_id(a, img);
    vd_close(img);
    img = id ? cli_open_snapshot(a->src, a->src_format, a->open_flags, id) : NULL;
    free(id);
    return img;
}

static int convert(const struct convert_args *a)
{
    if (!cli_format_known(a->out_format))
        return cli_error("Unknown file format '%s'", a->out_format);
    vd_image *src = open_source(a);
    if (!src)
        return EXIT_FAILURE;
    uint64_t size;
    bool created = false;
    int rc = vd_get_size(src, &size);
    int status = rc < 0 ? cli_lib_error(rc, "%s", a->src) : cli_check_create_target(a->dst);
    if (status == EXIT_SUCCESS)
        status = create_destination(a, size, &created);
    if (status == EXIT_SUCCESS)
        status = copy_to_destination(a, src, size);
    if (status != EXIT_SUCCESS && created) /* a half-written image of ours is worse than none */
        unlink(a->dst);
    vd_close(src);
    return status;
}

static bool parse_sparse_size(const char *text, size_t *out)
{
    uint64_t size;
    if (!size_parse_arg("buffer size for sparse output", text, INT64_MAX, &size))
        return false;
    if (size % SECTOR_SIZE || size > MAX_SPARSE_SIZE) {
        cli_error("Invalid buffer size for sparse output specified. Valid sizes are multiples "
                  "of %u up to %u. Select 0 to disable sparse detection (fully allocates "
                  "output).", SECTOR_SIZE, MAX_SPARSE_SIZE);
        return false;
    }
    *out = (size_t)size;
    return true;
}

/* Forget an earlier -l or -s: the last one counts. */
static void clear_snapshot(struct convert_args *a)
{
    free(a->snapshot_id);
    free(a->snapshot_name);
    a->snapshot_id = a->snapshot_name = NULL;
    a->snapshot_either = false;
}

/* -s, or -l without "snapshot.": a snapshot id or name. */
static bool set_snapshot_id_or_name(const char *id_or_name, struct convert_args *a)
{
    clear_snapshot(a);
    a->snapshot_either = true;
    if ((a->snapshot_id = strdup(id_or_name)))
        return true;
    cli_error("out of memory");
    return false;
}

/* -l: "snapshot.id=ID,snapshot.name=NAME" (one or both), or else an id or a name. */
static bool parse_snapshot_param(const char *param, struct convert_args *a)
{
    if (strncmp(param, "snapshot.", strlen("snapshot.")) != 0)
        return set_snapshot_id_or_name(param, a);
    clear_snapshot(a);
    const char *cursor = param;
    char *item;
    while ((item = cli_next_option_item(&cursor))) {
        char *eq = strchr(item, '=');
        if (eq)
            *eq = '\0';
        char **value = strcmp(item, "snapshot.id") == 0     ? &a->snapshot_id
                       : strcmp(item, "snapshot.name") == 0 ? &a->snapshot_name : NULL;
        if (value) {
            free(*value);
            *value = strdup(eq ? eq + 1 : "on"); /* a bare key means "on", as in qemu */
        } else {
            cli_error("Invalid parameter '%s'", item);
            cli_error("Failed in parsing snapshot param '%s'", param);
        }
        free(item);
        if (!value)
            return false;
        if (!*value) {
            cli_error("out of memory");
            return false;
        }
    }
    return true;
}

static int parse_and_convert(int argc, char **argv, struct convert_args *a)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    bool src_flush;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:O:o:B:F:l:s:S:pqUt:T:", long_options, NULL)) !=
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
            if (!parse_snapshot_param(optarg, a))
                return EXIT_FAILURE;
            break;
        case 's': /* the older qemu-img spelling of -l ID_OR_NAME */
            if (!set_snapshot_id_or_name(optarg, a))
                return EXIT_FAILURE;
            break;
        case 'S':
            if (!parse_sparse_size(optarg, &a->sparse_size))
                return EXIT_FAILURE;
            break;
        case 'p':
            a->progress = true;
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
            if (!cli_parse_cache_mode(optarg, &a->flush))
                return cli_error("Invalid cache option: %s", optarg);
            break;
        case 'T': /* the source is only read: any mode reads the same */
            if (!cli_parse_cache_mode(optarg, &src_flush))
                return cli_error("Invalid source cache option: %s", optarg);
            break;
        default:
            return cli_option_fallback(&cmd_convert, opt, argv);
        }
    }
    if (!cli_append_backing(&a->options, a->backing, a->backing_fmt))
        return cli_error("out of memory");
    if (cli_options_want_help(a->options))
        return cli_print_format_options(a->out_format);
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
    struct convert_args args = { .out_format = "raw", .sparse_size = DEFAULT_SPARSE_SIZE };
    int status = parse_and_convert(argc, argv, &args);
    free(args.options);
    free(args.snapshot_id);
    free(args.snapshot_name);
    return status;
}

const struct cli_command cmd_convert = {
    .name = "convert",
    .synopsis = "[-p] [-q] [-U] [--safe] [-f fmt] [-O output_fmt] "
                "[-B backing_file [-F backing_fmt]] "
                "[-o options] [-l snapshot_param] [-S sparse_size] [-t cache] [-T src_cache] "
                "filename output_filename",
    .summary = "copy a disk image, possibly to another format",
    .options =
        "  -f fmt          format of the source (default: probe the file)\n"
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
        "                  it to stable storage at the end\n"
        "  -T src_cache    cache mode of the source (accepted; reads are the same)\n"
        "  -p              show progress (when standard output is a terminal)\n"
        "  -q              quiet: no progress\n"
        "  -U, --force-share\n"
        "                  open the source without taking locks\n"
        CLI_HELP_SAFE
        "                  (the source; the destination's -B backing file too)\n"
        "  filename        the source image; an overlay is read through its backing\n"
        "                  chain, so without -B the destination holds everything\n"
        "                  (flattened)\n"
        "  output_filename the destination; created, or overwritten if it exists\n",
    .run = run_convert,
};
