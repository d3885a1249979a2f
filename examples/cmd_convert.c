/* vdisk convert [-p] [-q] [-U] [-f fmt] [-O fmt] [-o options] [-S size] [-t cache] [-T src_cache]
 *               src dst */
#include "cli.h"
#include "copy.h"
#include "size.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
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
    uint32_t open_flags;    /* for the source */
    const char *src, *dst;
};

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Refuse destinations that overwriting would harm: special files and the source itself. */
static int check_destination(const struct convert_args *a)
{
    struct stat src_st, dst_st;
    if (cli_check_create_target(a->dst) != EXIT_SUCCESS)
        return EXIT_FAILURE;
    if (stat(a->dst, &dst_st) == 0 && stat(a->src, &src_st) == 0 && same_file(&src_st, &dst_st))
        return cli_error("%s: error while converting %s: the destination is the source image",
                         a->dst, a->out_format);
    return EXIT_SUCCESS;
}

/* Create the destination; *created says whether the path is new, and so ours to remove. */
static int create_destination(const struct convert_args *a, uint64_t size, bool *created)
{
    int rc = vd_create(a->dst, a->out_format, size, a->options, VD_CREATE_EXCL);
    *created = rc == 0;
    if (rc == VD_EEXIST) /* like qemu-img, overwrite an existing file */
        rc = vd_create(a->dst, a->out_format, size, a->options, 0);
    if (rc < 0)
        return cli_lib_error(rc, "%s: error while converting %s", a->dst, a->out_format);
    return EXIT_SUCCESS;
}

static int copy_to_destination(const struct convert_args *a, vd_image *src, uint64_t size)
{
    vd_image *dst = cli_open_image(a->dst, a->out_format,
                                   VD_OPEN_RDWR | (a->flush ? 0 : VD_OPEN_NO_FLUSH));
    if (!dst)
        return EXIT_FAILURE;
    struct progress progress;
    progress_start(&progress, a->progress && !a->quiet);
    struct copy_params params = { src, dst, size, a->sparse_size, &progress };
    struct copy_error err;
    int rc = copy_image(&params, &err);
    progress_finish(&progress, rc == 0);
    int close_rc = vd_close(dst); /* writes the destination out (and syncs it with flush) */
    if (rc < 0)
        return cli_error("error while %s at byte %" PRIu64 ": %s", err.action, err.offset,
                         err.message);
    if (close_rc < 0)
        return cli_lib_error(close_rc, "error while writing '%s'", a->dst);
    return EXIT_SUCCESS;
}

static int convert(const struct convert_args *a)
{
    if (!cli_format_known(a->out_format))
        return cli_error("Unknown file format '%s'", a->out_format);
    vd_image *src = cli_open_image(a->src, a->src_format, a->open_flags);
    if (!src)
        return EXIT_FAILURE;
    uint64_t size;
    bool created = false;
    int rc = vd_get_size(src, &size);
    int status = rc < 0 ? cli_lib_error(rc, "%s", a->src) : check_destination(a);
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

static int parse_and_convert(int argc, char **argv, struct convert_args *a)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, { NULL, 0, NULL, 0 },
    };
    bool src_flush;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:O:o:S:pqUt:T:", long_options, NULL)) != -1) {
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
    return status;
}

const struct cli_command cmd_convert = {
    .name = "convert",
    .synopsis = "[-p] [-q] [-U] [-f fmt] [-O output_fmt] [-o options] [-S sparse_size] "
                "[-t cache] [-T src_cache] filename output_filename",
    .summary = "copy a disk image, possibly to another format",
    .options =
        "  -f fmt          format of the source (default: probe the file)\n"
        "  -O output_fmt   format of the destination (default: raw)\n"
        "  -o options      create options of the destination, key=value[,...];\n"
        "                  '-o help' lists them\n"
        "  -S sparse_size  leave all-zero runs of this many bytes unwritten so the\n"
        "                  destination stays sparse (default 4k; a multiple of 512 up\n"
        "                  to 16M; 0 writes every byte and fully allocates the output)\n"
        "  -t cache        cache mode of the destination: 'unsafe' (default) never\n"
        "                  syncs it; none, writeback, writethrough and directsync sync\n"
        "                  it to stable storage at the end\n"
        "  -T src_cache    cache mode of the source (accepted; reads are the same)\n"
        "  -p              show progress (when standard output is a terminal)\n"
        "  -q              quiet: no progress\n"
        "  -U, --force-share\n"
        "                  open the source without taking locks\n"
        "  filename        the source image; an overlay is read through its backing\n"
        "                  chain, so the destination holds everything (flattened)\n"
        "  output_filename the destination; created, or overwritten if it exists\n",
    .run = run_convert,
};
