/* vdisk rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u] [-U] [--safe] -b backing_file
 *              [-F backing_fmt] filename */
#include "cli.h"
#include "progress.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

struct rebase_args {
    const char *format;
    const char *backing;      /* -b: the new backing file, "" for none */
    const char *backing_fmt;  /* -F, or NULL to probe */
    bool unsafe, progress, quiet;
    bool force_share;         /* -U: the new backing chain is opened without locks */
    uint32_t open_flags;      /* -t's cache flags, VD_OPEN_SAFE with --safe */
    const char *filename;
};

static int rebase(const struct rebase_args *a)
{
    /* the safe mode reads the old chain; the unsafe one only rewrites the header */
    vd_image *img = cli_open_image(a->filename, a->format,
                                   a->open_flags | VD_OPEN_RDWR |
                                   (a->unsafe ? VD_OPEN_NO_BACKING : 0));
    if (!img)
        return EXIT_FAILURE;
    int status = EXIT_SUCCESS, rc = 0;
    if (a->unsafe && *a->backing && !a->backing_fmt) /* nothing may be opened to probe it */
        status = cli_error("Could not change the backing file to '%s': backing format must be "
                           "specified", a->backing);
    else if (!a->unsafe && *a->backing &&
        (rc = cli_try_backing(a->filename, a->backing, a->backing_fmt,
                              a->open_flags & VD_OPEN_SAFE, NULL)) < 0)
        status = cli_lib_error(rc, "Could not open new backing file '%s'", a->backing);
    if (status == EXIT_SUCCESS) {
        struct progress progress;
        progress_start(&progress, a->progress && !a->quiet);
        rc = vd_rebase(img, a->backing, a->backing_fmt,
                       (a->unsafe ? VD_REBASE_UNSAFE : 0) |
                       (a->force_share ? VD_REBASE_NO_LOCK : 0));
        progress_finish(&progress, rc == 0);
        if (rc < 0)
            status = cli_lib_error(rc, "Could not change the backing file to '%s'", a->backing);
    }
    rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    return status;
}

static int run_rebase(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    struct rebase_args args = { 0 };
    uint32_t cache = 0, src_cache = 0;
    bool safe = false;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:F:b:upqUt:T:", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            args.format = optarg;
            break;
        case 'F':
            args.backing_fmt = optarg;
            break;
        case 'b':
            args.backing = optarg;
            break;
        case 'u':
            args.unsafe = true;
            break;
        case 'U':
            args.force_share = true;
            break;
        case 'p':
            args.progress = true;
            break;
        case 'q':
            args.quiet = true;
            break;
        case 't':
            if (!cli_parse_cache_mode(optarg, &cache))
                return cli_error("Invalid cache option: %s", optarg);
            break;
        case 'T': /* checked only: the backing files are opened as the image is (-t) */
            if (!cli_parse_cache_mode(optarg, &src_cache))
                return cli_error("Invalid source cache option: %s", optarg);
            break;
        case CLI_OPT_SAFE:
            safe = true;
            break;
        default:
            return cli_option_fallback(&cmd_rebase, opt, argv);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    if (!args.unsafe && !args.backing)
        return cli_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    if (!args.backing) /* qemu-img: -u without -b removes the backing file */
        args.backing = "";
    args.open_flags = cache | (safe ? VD_OPEN_SAFE : 0);
    args.filename = argv[optind];
    return rebase(&args);
}

const struct cli_command cmd_rebase = {
    .name = "rebase",
    .synopsis = "[-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u] [-U] [--safe] -b backing_file "
                "[-F backing_fmt] filename",
    .summary = "change the backing file of an image",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  -b backing_file the new backing file (a relative name is relative to the\n"
        "                  image's directory); \"\" for none. Clusters that read\n"
        "                  differently through the old and the new backing file are\n"
        "                  first copied into the image, so what it shows is unchanged\n"
        "  -F backing_fmt  format of the new backing file (default: probe it; a file\n"
        "                  that probes as raw needs -F raw)\n"
        "  -u              unsafe: only change the recorded name; the old and the new\n"
        "                  backing file are not opened (rename or move a backing file)\n"
        "  -t cache        cache mode of the image: writeback (default), none,\n"
        "                  writethrough and directsync sync it at the end, unsafe does not\n"
        "  -T src_cache    cache mode of the backing files (checked; they are opened\n"
        "                  with O_DIRECT or not as -t opens the image)\n"
        "  -p              show progress (0% and 100%)\n"
        "  -q              quiet: no progress\n"
        "  -U, --force-share\n"
        "                  open the new backing file (and its chain) without taking\n"
        "                  locks, so another process may hold it, even read-write;\n"
        "                  the image itself and its old backing chain are locked\n"
        "                  as without -U (as qemu-img does)\n"
        CLI_HELP_SAFE
        "                  (the new backing file too; then -F is needed)\n"
        "  filename        the image to rebase, opened read-write\n",
    .run = run_rebase,
    .image_opts = true,
};
