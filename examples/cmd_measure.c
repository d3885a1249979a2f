/* vdisk measure [--output=ofmt] [-O fmt] [-o options] [--size N | [-f fmt] [-l snapshot_param]
 *               [-U] [--safe] filename] */
#include "cli.h"
#include "json.h"
#include "size.h"
#include "snapshots.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct measure_args {
    enum output_format output;
    const char *out_format;   /* -O, default raw */
    char *options;            /* -o, joined */
    bool has_size;            /* --size */
    uint64_t size;
    const char *format;       /* -f */
    struct snapshot_param snapshot; /* -l */
    uint32_t open_flags;      /* VD_OPEN_NO_LOCK with -U, VD_OPEN_SAFE with --safe */
    const char *filename;
};

static void print_result(const vd_measure_result *r, enum output_format output)
{
    if (output == OUTPUT_HUMAN) {
        printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", r->required,
               r->fully_allocated);
        if (r->has_bitmaps)
            printf("bitmaps size: %" PRIu64 "\n", r->bitmaps);
        return;
    }
    struct json_writer w;
    json_init(&w, stdout, JSON_PRETTY);
    json_begin_object(&w, NULL);
    if (r->has_bitmaps)
        json_uint(&w, "bitmaps", r->bitmaps);
    json_uint(&w, "required", r->required);
    json_uint(&w, "fully-allocated", r->fully_allocated);
    json_end_object(&w);
}

/* Report a failed vd_measure(), in qemu-img's words for options the format refuses. */
static int report_measure_error(int rc, const struct measure_args *a)
{
    const char *why = vd_errmsg();
    if (strncmp(why, "Invalid parameter '", strlen("Invalid parameter '")) == 0) {
        const char *end = strchr(why + strlen("Invalid parameter '"), '\'');
        cli_error("%.*s", end ? (int)(end - why + 1) : (int)strlen(why), why);
        return cli_error("Invalid options for file format '%s'", a->out_format);
    }
    return cli_error("%s", *why ? why : vd_strerror(rc)); /* the library names what failed */
}

static int measure(const struct measure_args *a)
{
    if (!a->filename && (a->format || a->snapshot.id || a->snapshot.name))
        return cli_error("--image-opts, -f, and -l require a filename argument.");
    if (a->filename && a->has_size)
        return cli_error("--size N cannot be used together with a filename.");
    if (!a->filename && !a->has_size)
        return cli_error("Either --size N or one filename must be specified.");
    vd_image *source = NULL;
    if (a->filename &&
        !(source = snapshot_param_open(a->filename, a->format, a->open_flags, &a->snapshot)))
        return EXIT_FAILURE;
    int status = EXIT_SUCCESS;
    if (!cli_format_known(a->out_format))
        status = cli_error("Unknown file format '%s'", a->out_format);
    vd_measure_result result = VD_MEASURE_RESULT_INIT;
    int rc = status == EXIT_SUCCESS
                 ? vd_measure(&result, a->out_format, a->options, source, a->size, 0)
                 : 0;
    if (rc < 0)
        status = report_measure_error(rc, a);
    else if (status == EXIT_SUCCESS)
        print_result(&result, a->output);
    vd_close(source);
    return status;
}

static int parse_and_measure(int argc, char **argv, struct measure_args *a)
{
    enum { OPT_OUTPUT = 256, OPT_SIZE };
    static const struct option long_options[] = {
        CLI_OPTION_HELP,
        CLI_OPTION_FORCE_SHARE,
        CLI_OPTION_SAFE,
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:o:O:l:U", long_options, NULL)) != -1) {
        switch (opt) {
        case 'f':
            a->format = optarg;
            break;
        case 'O':
            a->out_format = optarg;
            break;
        case 'o':
            if (!cli_append_options(&a->options, optarg))
                return cli_error("out of memory");
            break;
        case 'l':
            if (!snapshot_param_parse(optarg, &a->snapshot))
                return EXIT_FAILURE;
            break;
        case 'U':
            a->open_flags |= VD_OPEN_NO_LOCK;
            break;
        case CLI_OPT_SAFE:
            a->open_flags |= VD_OPEN_SAFE;
            break;
        case OPT_OUTPUT:
            if (strcmp(optarg, "human") != 0 && strcmp(optarg, "json") != 0)
                return cli_error("--output must be used with human or json as argument.");
            a->output = optarg[0] == 'j' ? OUTPUT_JSON : OUTPUT_HUMAN;
            break;
        case OPT_SIZE:
            if (!size_parse_arg("image size", optarg, INT64_MAX, &a->size))
                return EXIT_FAILURE;
            a->has_size = true;
            break;
        default:
            return cli_option_fallback(&cmd_measure, opt, argv);
        }
    }
    if (argc - optind > 1)
        return cli_error("At most one filename argument is allowed.");
    a->filename = optind < argc ? argv[optind] : NULL;
    return measure(a);
}

static int run_measure(int argc, char **argv)
{
    struct measure_args a = { .output = OUTPUT_HUMAN, .out_format = "raw" };
    int status = parse_and_measure(argc, argv, &a);
    free(a.options);
    snapshot_param_free(&a.snapshot);
    return status;
}

const struct cli_command cmd_measure = {
    .name = "measure",
    .synopsis = "[--output=ofmt] [-O output_fmt] [-o options] "
                "[--size N | [-f fmt] [-l snapshot_param] [-U] [--safe] filename]",
    .summary = "compute the file size an image would need",
    .options =
        "  --output=ofmt   'human' (default) or 'json'\n"
        "  -O output_fmt   the format of the image to measure for (default: raw)\n"
        "  -o options      its create options, as for create (-o help lists them)\n"
        "  --size N        measure a new, empty image of N bytes (k, M, G, T, P, E)\n"
        "  -f fmt          format of filename (default: probe the file)\n"
        "  -l snapshot_param\n"
        "                  measure an internal snapshot of filename:\n"
        "                  snapshot.id=ID,snapshot.name=NAME, or an id or a name\n"
        "  -U, --force-share\n"
        "                  open without taking locks (an image in use)\n"
        CLI_HELP_SAFE
        "  filename        measure an image holding this image's data (read through\n"
        "                  its backing chain)\n"
        "Prints 'required size' (for the data the source holds) and 'fully allocated\n"
        "size', the figures qemu-img measure prints, and 'bitmaps size' where qemu-img\n"
        "prints it.\n",
    .run = run_measure,
    .image_opts = true,
};
