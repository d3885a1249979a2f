/* vdisk resize [-q] [-f fmt] [--shrink] [--safe] filename [+|-]size */
#include "cli.h"
#include "size.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

struct resize_args {
    const char *format;
    bool shrink, quiet;
    uint32_t open_flags;  /* VD_OPEN_SAFE with --safe */
    const char *filename;
    const char *size;     /* "[+|-]size" */
};

/* "[+|-]size": *sign is +1 or -1 for a change of the size, 0 for a new size. */
static bool parse_size_arg(const char *text, int *sign, uint64_t *n)
{
    *sign = text[0] == '+' ? 1 : text[0] == '-' ? -1 : 0;
    if (size_parse(text + (*sign != 0), n) == 0)
        return true;
    cli_error("Parameter 'size' expects a non-negative number below 2^64");
    fputs("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
          "and exabytes, respectively.\n", stderr);
    return false;
}

/* The new size from the parsed argument and the current size, or false (reported). */
static bool new_size(int sign, uint64_t n, uint64_t current, uint64_t *out)
{
    if ((sign < 0 && n >= current) || (sign == 0 && n == 0)) {
        cli_error("New image size must be positive");
        return false;
    }
    *out = sign > 0 ? current + n : sign < 0 ? current - n : n;
    if ((sign > 0 && *out < current) || *out > INT64_MAX) {
        cli_error("Invalid image size specified. Must be between 0 and %lld.",
                  (long long)INT64_MAX);
        return false;
    }
    return true;
}

static int resize_image(vd_image *img, const struct resize_args *a, int sign, uint64_t n)
{
    uint64_t current, size;
    int rc = vd_get_size(img, &current);
    if (rc < 0)
        return cli_lib_error(rc, "Failed to inquire current image length");
    if (!new_size(sign, n, current, &size))
        return EXIT_FAILURE;
    if (size < current && !a->shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        return cli_error("warning: Shrinking an image will delete all data beyond the shrunken "
                         "image's end. Before performing such an operation, make sure there "
                         "is no important data there.");
    }
    rc = vd_resize(img, size, a->shrink ? VD_RESIZE_SHRINK : 0);
    return rc < 0 ? cli_file_error(rc, a->filename) : EXIT_SUCCESS;
}

static int resize(const struct resize_args *a)
{
    int sign;
    uint64_t n;
    if (!parse_size_arg(a->size, &sign, &n)) /* before opening, as qemu-img */
        return EXIT_FAILURE;
    vd_image *img = cli_open_image(a->filename, a->format, a->open_flags | VD_OPEN_RDWR);
    if (!img)
        return EXIT_FAILURE;
    int status = resize_image(img, a, sign, n);
    int rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    if (status == EXIT_SUCCESS && !a->quiet)
        printf("Image resized.\n");
    return status;
}

static int run_resize(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 }; /* beyond every short option */
    static const struct option long_options[] = {
        CLI_OPTION_HELP,
        { "shrink", no_argument, NULL, OPT_SHRINK },
        CLI_OPTION_SAFE,
        { NULL, 0, NULL, 0 },
    };
    struct resize_args args = { 0 };
    /* like qemu-img, take the size off first so that "-1G" is no option */
    if (argc >= 3)
        args.size = argv[--argc];
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:q", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            args.format = optarg;
            break;
        case 'q':
            args.quiet = true;
            break;
        case OPT_SHRINK:
            args.shrink = true;
            break;
        case CLI_OPT_SAFE:
            args.open_flags |= VD_OPEN_SAFE;
            break;
        default:
            return cli_option_fallback(&cmd_resize, opt, argv);
        }
    }
    if (!args.size)
        return cli_usage_error("Not enough arguments");
    if (optind != argc - 1)
        return cli_usage_error("Expecting image file name and size");
    args.filename = argv[optind];
    return resize(&args);
}

const struct cli_command cmd_resize = {
    .name = "resize",
    .synopsis = "[-q] [-f fmt] [--shrink] [--safe] filename [+|-]size",
    .summary = "change the virtual size of a disk image",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  --shrink        allow making the image smaller; the data past the new\n"
        "                  end is lost\n"
        "  -q              quiet: do not print 'Image resized.'\n"
        CLI_HELP_SAFE
        "  filename        the image to resize\n"
        "  size            the new virtual size, or with + or - the change of the\n"
        "                  size (k, M, G, T, P and E suffixes as for create)\n",
    .run = run_resize,
    .image_opts = true,
};
