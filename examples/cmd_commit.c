/* vdisk commit [-f fmt] [-t cache] [-d] [-p] [-q] [--safe] filename */
#include "cli.h"
#include "progress.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

struct commit_args {
    const char *format;
    bool keep, progress, quiet; /* keep: -d, the image keeps its data */
    uint32_t open_flags;        /* -t's cache flags, VD_OPEN_SAFE with --safe */
    const char *filename;
};

static int commit_image(vd_image *img, const struct commit_args *a)
{
    if (!vd_get_backing(img))
        return cli_error("Image does not have a backing file");
    struct progress progress;
    progress_start(&progress, a->progress && !a->quiet);
    int rc = vd_commit(img, a->keep ? 0 : VD_COMMIT_EMPTY);
    progress_finish(&progress, rc == 0);
    return rc < 0 ? cli_file_error(rc, a->filename) : EXIT_SUCCESS;
}

static int commit(const struct commit_args *a)
{
    vd_image *img = cli_open_image(a->filename, a->format, a->open_flags | VD_OPEN_RDWR);
    if (!img)
        return EXIT_FAILURE;
    int status = commit_image(img, a);
    int rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    if (status == EXIT_SUCCESS && !a->quiet)
        printf("Image committed.\n");
    return status;
}

static int run_commit(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    struct commit_args args = { 0 };
    uint32_t cache = 0;
    bool safe = false;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:t:dpq", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            args.format = optarg;
            break;
        case 't':
            if (!cli_parse_cache_mode(optarg, &cache))
                return cli_error("Invalid cache option: %s", optarg);
            break;
        case 'd':
            args.keep = true;
            break;
        case 'p':
            args.progress = true;
            break;
        case 'q':
            args.quiet = true;
            break;
        case CLI_OPT_SAFE:
            safe = true;
            break;
        default:
            return cli_option_fallback(&cmd_commit, opt, argv);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    args.open_flags = cache | (safe ? VD_OPEN_SAFE : 0);
    args.filename = argv[optind];
    return commit(&args);
}

const struct cli_command cmd_commit = {
    .name = "commit",
    .synopsis = "[-f fmt] [-t cache] [-d] [-p] [-q] [--safe] filename",
    .summary = "write the data of an overlay into its backing file",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  -d              keep the data in the image; by default it is emptied\n"
        "                  afterwards, so that it reads through to the backing file\n"
        "  -t cache        cache mode: writeback (default), none, writethrough and\n"
        "                  directsync sync the images at the end, unsafe does not\n"
        "  -p              show progress (0% and 100%)\n"
        "  -q              quiet: do not print 'Image committed.'\n"
        CLI_HELP_SAFE
        "  filename        the overlay, opened read-write; its backing file is grown\n"
        "                  when the overlay is larger\n",
    .run = run_commit,
    .image_opts = true,
};
