/* vdisk amend [--object ...] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] [--safe]
 *             -o options filename */
#include "cli.h"
#include "progress.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

struct amend_args {
    const char *format;
    char *options;          /* the -o lists joined */
    bool progress, quiet;
    uint32_t open_flags;    /* VD_OPEN_NO_FLUSH with -t unsafe, VD_OPEN_SAFE with --safe */
    const char *filename;
};

/* '-o help': the options vd_amend() takes for the format (qemu-img's list). */
static int print_amend_options(const char *format)
{
    if (!cli_format_known(format))
        return cli_error("Unknown file format '%s'", format);
    const char *name, *help;
    if (vd_amend_option(format, 0, &name, &help) < 0)
        return cli_error("Format driver '%s' does not support option amendment", format);
    printf("Amend options for '%s':\n", format);
    for (size_t i = 0; vd_amend_option(format, i, &name, &help) == 0; i++)
        printf("  %-22s - %s\n", name, help);
    return EXIT_SUCCESS;
}

static int amend(const struct amend_args *a)
{
    vd_image *img = cli_open_image(a->filename, a->format, a->open_flags | VD_OPEN_RDWR);
    if (!img)
        return EXIT_FAILURE;
    int status;
    if (cli_options_want_help(a->options)) {
        status = print_amend_options(vd_get_format(img));
    } else {
        struct progress progress;
        progress_start(&progress, a->progress && !a->quiet);
        int rc = vd_amend(img, a->options, 0);
        progress_finish(&progress, rc == 0);
        status = rc < 0 ? cli_error("%s", vd_errmsg()) : EXIT_SUCCESS;
    }
    int rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    return status;
}

static int parse_and_amend(int argc, char **argv, struct amend_args *a)
{
    enum { OPT_FORCE = 256 };
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_SAFE, { "force", no_argument, NULL, OPT_FORCE },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, ":ho:f:t:pq", long_options, NULL)) != -1) {
        switch (opt) {
        case 'o':
            if (!cli_append_options(&a->options, optarg))
                return cli_error("out of memory");
            break;
        case 'f':
            a->format = optarg;
            break;
        case 't':
            if (!cli_parse_cache_mode(optarg, &a->open_flags))
                return cli_error("Invalid cache option: %s", optarg);
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case OPT_FORCE: /* qemu-img's unsafe encryption key changes: none are amendable here */
            break;
        case CLI_OPT_SAFE:
            a->open_flags |= VD_OPEN_SAFE;
            break;
        default:
            return cli_option_fallback(&cmd_amend, opt, argv);
        }
    }
    if (!a->options)
        return cli_usage_error("Must specify options (-o)");
    /* with a format, the help needs no image (as qemu-img) */
    if (a->format && cli_options_want_help(a->options))
        return print_amend_options(a->format);
    if (optind != argc - 1)
        return cli_error("Expecting one image file name");
    a->filename = argv[optind];
    return amend(a);
}

static int run_amend(int argc, char **argv)
{
    struct amend_args args = { 0 };
    int status = parse_and_amend(argc, argv, &args);
    free(args.options);
    return status;
}

const struct cli_command cmd_amend = {
    .name = "amend",
    .synopsis = "[-p] [-q] [-f fmt] [-t cache] [--force] [--safe] -o options filename",
    .summary = "change the format-specific options of an image in place",
    .options =
        "  -o options      the options to change, key=value[,key=value...]; repeat -o\n"
        "                  to give more; '-o help' lists them. qcow2: compat (0.10 or\n"
        "                  1.1), refcount_bits, lazy_refcounts, size, data_file,\n"
        "                  data_file_raw=off; backing_file and backing_fmt only as\n"
        "                  the image records them (change them with rebase)\n"
        "  -f fmt          image format (default: probe the file)\n"
        "  -t cache        cache mode: writeback (default), none, writethrough and\n"
        "                  directsync sync the image at the end, unsafe does not\n"
        "  -p              show progress (0% and 100%)\n"
        "  -q              quiet: no progress\n"
        "  --force         accepted for qemu-img compatibility (no option needs it)\n"
        CLI_HELP_SAFE
        "  filename        the image to change, opened read-write\n",
    .run = run_amend,
    .image_opts = true,
};
