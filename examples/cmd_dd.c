/* vdisk dd [-f fmt] [-O output_fmt] [-U] [--safe] [bs=block_size] [count=blocks] [skip=blocks]
 *          if=input of=output */
#include "cli.h"
#include "size.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies go in pieces of about this size (whole blocks), whatever bs is. */
#define COPY_CHUNK (1u << 20)

struct dd_args {
    const char *format;     /* -f */
    const char *out_format; /* -O, default raw */
    uint32_t open_flags;    /* VD_OPEN_NO_LOCK with -U, VD_OPEN_SAFE with --safe */
    const char *input, *output;
    uint64_t block_size;    /* bs=, default 512 */
    uint64_t count, skip;   /* in blocks */
    bool has_count, has_skip;
};

/*
 * The input bytes qemu-img dd copies: [*start, *end). As in qemu-img 7.2,
 * count limits the input from its beginning, not from the skipped offset,
 * and a skip past the end copies nothing (reported, still success).
 */
static void input_range(const struct dd_args *a, uint64_t input_size, uint64_t *start,
                        uint64_t *end)
{
    uint64_t bs = a->block_size;
    *end = input_size;
    if (a->has_count && a->count <= INT64_MAX / bs && a->count * bs < *end)
        *end = a->count * bs;
    bool skip_past_end = a->has_skip && (a->skip > INT64_MAX / bs || a->skip * bs > *end);
    if (skip_past_end)
        cli_error("%s: cannot skip to specified offset", a->input);
    *start = skip_past_end ? *end : a->has_skip ? a->skip * bs : 0;
}

/* Copy [start, end) of in to the beginning of out, in whole blocks but a last short one. */
static int copy_range(const struct dd_args *a, vd_image *in, vd_image *out, uint64_t start,
                      uint64_t end)
{
    size_t chunk = COPY_CHUNK - COPY_CHUNK % a->block_size;
    if (chunk == 0)
        chunk = (size_t)a->block_size;
    uint8_t *buf = malloc(chunk);
    if (!buf)
        return cli_error("out of memory");
    int status = EXIT_SUCCESS;
    for (uint64_t pos = start; pos < end && status == EXIT_SUCCESS;) {
        size_t n = end - pos < chunk ? (size_t)(end - pos) : chunk;
        int rc = vd_read(in, pos, buf, n, 0);
        if (rc < 0)
            status = cli_lib_error(rc, "error while reading from input image file");
        else if ((rc = vd_write(out, pos - start, buf, n, 0)) < 0)
            status = cli_lib_error(rc, "error while writing to output image file");
        pos += n;
    }
    free(buf);
    return status;
}

static int create_output(const struct dd_args *a, uint64_t size)
{
    if (cli_check_create_target(a->output) != EXIT_SUCCESS)
        return EXIT_FAILURE;
    int rc = vd_create(a->output, a->out_format, size, NULL, 0);
    return rc < 0 ? cli_lib_error(rc, "%s: error while creating output image", a->output)
                  : EXIT_SUCCESS;
}

static int dd(const struct dd_args *a)
{
    vd_image *in = cli_open_image(a->input, a->format, a->open_flags), *out = NULL;
    if (!in)
        return EXIT_FAILURE;
    uint64_t size = 0, start = 0, end = 0;
    int rc = vd_get_size(in, &size);
    int status = rc < 0 ? cli_lib_error(rc, "%s", a->input) : EXIT_SUCCESS;
    if (status == EXIT_SUCCESS && !cli_format_known(a->out_format))
        status = cli_error("Unknown file format");
    if (status == EXIT_SUCCESS) {
        input_range(a, size, &start, &end);
        status = create_output(a, end - start);
    }
    if (status == EXIT_SUCCESS && !(out = cli_open_path(a->output, a->out_format, VD_OPEN_RDWR)))
        status = EXIT_FAILURE;
    if (status == EXIT_SUCCESS)
        status = copy_range(a, in, out, start, end);
    if ((rc = vd_close(out)) < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing to output image file");
    vd_close(in);
    return status;
}

/* A number of bs=, count= or skip=, with qemu-img's messages. */
static bool parse_number(const char *what, const char *text, uint64_t max, uint64_t *out)
{
    if (!size_parse_arg(what, text, UINT64_MAX, out))
        return false;
    if (*out < (strcmp(what, "bs") == 0) || *out > max) {
        cli_error("Invalid %s specified. Must be between %d and %" PRIu64 ".", what,
                  strcmp(what, "bs") == 0, max);
        return false;
    }
    return true;
}

/* One "name=value" operand. */
static bool parse_operand(const char *arg, struct dd_args *a)
{
    const char *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
    const char *value = eq ? eq + 1 : "";
#define IS(name) (name_len == strlen(name) && strncmp(arg, name, name_len) == 0)
    if (eq && IS("bs"))
        return parse_number("bs", value, INT_MAX, &a->block_size);
    if (eq && IS("count"))
        return a->has_count = parse_number("count", value, INT64_MAX, &a->count);
    if (eq && IS("skip"))
        return a->has_skip = parse_number("skip", value, INT64_MAX, &a->skip);
    if (eq && (IS("if") || IS("of"))) { /* the last one counts, as in qemu-img */
        *(IS("if") ? &a->input : &a->output) = value;
        return true;
    }
#undef IS
    cli_error("unrecognized operand %.*s", (int)name_len, arg);
    return false;
}

static int run_dd(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    struct dd_args a = { .out_format = "raw", .block_size = 512 };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:O:U", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            a.format = optarg;
            break;
        case 'O':
            a.out_format = optarg;
            break;
        case 'U':
            a.open_flags |= VD_OPEN_NO_LOCK;
            break;
        case CLI_OPT_SAFE:
            a.open_flags |= VD_OPEN_SAFE;
            break;
        default:
            return cli_option_fallback(&cmd_dd, opt, argv);
        }
    }
    for (int i = optind; i < argc; i++)
        if (!parse_operand(argv[i], &a))
            return EXIT_FAILURE;
    if (!a.input || !a.output)
        return cli_error("Must specify both input and output files");
    return dd(&a);
}

const struct cli_command cmd_dd = {
    .name = "dd",
    .synopsis = "[-f fmt] [-O output_fmt] [-U] [--safe] [bs=block_size] [count=blocks] "
                "[skip=blocks] if=input of=output",
    .summary = "copy part of an image into a new image, as dd(1) does",
    .options =
        "  -f fmt          format of the input (default: probe the file)\n"
        "  -O output_fmt   format of the new output image (default: raw)\n"
        "  -U, --force-share\n"
        "                  open the input without taking locks\n"
        CLI_HELP_SAFE
        "  bs=block_size   the block size (default 512; k, M, G suffixes)\n"
        "  count=blocks    copy the input only up to this many blocks from its start\n"
        "                  (as qemu-img: skipped blocks count too)\n"
        "  skip=blocks     start at this block of the input\n"
        "  if=input        the image to read (through its backing chain)\n"
        "  of=output       the image to create (overwritten if it exists)\n",
    .run = run_dd,
    .image_opts = true,
};
