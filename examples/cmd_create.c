/* vdisk create [-q] [-f fmt] [-o options] filename size */
#include "cli.h"
#include "size.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

struct create_args {
    const char *format;
    char *options; /* joined -o arguments, or NULL */
    bool quiet;
    const char *filename;
    const char *size;
};

/* qemu-img's announcement, with the options the user gave. */
static void print_formatting(const struct create_args *a, uint64_t size)
{
    printf("Formatting '%s', fmt=%s size=%" PRIu64, a->filename, a->format, size);
    const char *cursor = a->options;
    char *item;
    while ((item = cli_next_option_item(&cursor))) {
        printf(" %s", item);
        free(item);
    }
    putchar('\n');
    fflush(stdout);
}

static int create_image(const struct create_args *a)
{
    if (cli_options_want_help(a->options))
        return cli_print_format_options(a->format);
    if (!a->filename)
        return cli_usage_error("Expecting image file name");
    if (!cli_format_known(a->format))
        return cli_error("%s: Unknown file format '%s'", a->filename, a->format);
    if (!a->size)
        return cli_error("%s: Image creation needs a size parameter", a->filename);
    uint64_t size;
    if (!size_parse_arg("image size", a->size, INT64_MAX, &size))
        return EXIT_FAILURE;
    if (cli_check_create_target(a->filename) != EXIT_SUCCESS)
        return EXIT_FAILURE;
    if (!a->quiet)
        print_formatting(a, size);
    int rc = vd_create(a->filename, a->format, size, a->options, 0);
    return rc < 0 ? cli_lib_error(rc, "%s", a->filename) : EXIT_SUCCESS;
}

static int parse_and_create(int argc, char **argv, struct create_args *a)
{
    static const struct option long_options[] = { CLI_OPTION_HELP, { NULL, 0, NULL, 0 } };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:o:q", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            a->format = optarg;
            break;
        case 'o':
            if (!cli_append_options(&a->options, optarg))
                return cli_error("out of memory");
            break;
        case 'q':
            a->quiet = true;
            break;
        default:
            return cli_option_fallback(&cmd_create, opt, argv);
        }
    }
    if (optind < argc)
        a->filename = argv[optind++];
    if (optind < argc)
        a->size = argv[optind++];
    if (optind < argc)
        return cli_usage_error("Unexpected argument: %s", argv[optind]);
    return create_image(a);
}

static int run_create(int argc, char **argv)
{
    struct create_args args = { .format = "raw" };
    int status = parse_and_create(argc, argv, &args);
    free(args.options);
    return status;
}

const struct cli_command cmd_create = {
    .name = "create",
    .synopsis = "[-q] [-f fmt] [-o options] filename size",
    .summary = "create a new disk image",
    .options =
        "  -f fmt        image format (default: raw)\n"
        "  -o options    format options, key=value[,key=value...]; ',,' is a literal\n"
        "                comma; '-o help' lists the options of the format\n"
        "  -q            quiet: do not print the 'Formatting ...' line\n"
        "  filename      the image to create; an existing file is overwritten\n"
        "  size          virtual size in bytes, or with a suffix k, M, G, T, P or E\n"
        "                (powers of 1024; fractions like 1.5G are allowed)\n",
    .run = run_create,
};
