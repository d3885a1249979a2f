/* vdisk create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] [--safe]
 *              filename [size] */
#include "cli.h"
#include "size.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct create_args {
    const char *format;
    char *options; /* joined -o arguments, then -b and -F as options; or NULL */
    bool quiet;
    bool unsafe_backing; /* -u: do not open the backing file */
    bool safe;           /* --safe: the backing file must be inside the image's directory */
    char *backing, *backing_fmt; /* what the options say (-b, -F or -o) */
    const char *filename;
    const char *size;
};

/*
 * qemu-img prints its Formatting line from the format's option list: in
 * that list's order, every option that was given or has a default in qemu,
 * sizes and numbers as plain numbers, other values with commas doubled.
 * Options missing from the list follow in the order given.
 */
struct shown_option {
    const char *name;
    const char *qemu_default; /* shown when not given; NULL: only when given */
    bool number;
};

static const struct shown_option qcow2_shown[] = {
    { "encrypt.format", NULL, false }, { "encrypt.key-secret", NULL, false },
    { "encrypt.cipher-alg", NULL, false }, { "encrypt.cipher-mode", NULL, false },
    { "encrypt.ivgen-alg", NULL, false }, { "encrypt.ivgen-hash-alg", NULL, false },
    { "encrypt.hash-alg", NULL, false }, { "encrypt.iter-time", NULL, true },
    { "cluster_size", "65536", true }, { "extended_l2", "off", false },
    { "preallocation", NULL, false }, { "compression_type", "zlib", false },
    { "size", NULL, true }, { "compat", NULL, false }, { "backing_file", NULL, false },
    { "backing_fmt", NULL, false }, { "data_file", NULL, false },
    { "data_file_raw", NULL, false }, { "lazy_refcounts", "off", false },
    { "refcount_bits", "16", true }, { NULL, NULL, false },
};

/* raw and the rest: the size, then what was given */
static const struct shown_option size_shown[] = { { "size", NULL, true }, { NULL, NULL, false } };

static const struct shown_option *shown_options(const char *format)
{
    return strcmp(format, "qcow2") == 0 ? qcow2_shown : size_shown;
}

static bool is_shown(const struct shown_option *shown, const char *name)
{
    for (; shown->name; shown++)
        if (strcmp(shown->name, name) == 0)
            return true;
    return false;
}

/* An option list item split at its '=' (in place); the value is "" without one. */
static const char *split_item(char *item)
{
    char *eq = strchr(item, '=');
    if (!eq)
        return "";
    *eq = '\0';
    return eq + 1;
}

/* The value the list gives name (the last one wins, as in qemu), malloc'd; NULL if none. */
static char *given_value(const char *options, const char *name)
{
    char *found = NULL, *item;
    while ((item = cli_next_option_item(&options))) {
        const char *value = split_item(item);
        if (strcmp(item, name) == 0) {
            free(found);
            found = strdup(value);
        }
        free(item);
    }
    return found;
}

static void print_option(const char *name, const char *value, bool number)
{
    uint64_t n;
    if (number && size_parse(value, &n) == 0) {
        printf(" %s=%" PRIu64, name, n);
        return;
    }
    printf(" %s=", name);
    for (; *value; value++) {
        if (*value == ',')
            putchar(',');
        putchar(*value);
    }
}

/* qemu-img's announcement: "Formatting 'FILE', fmt=FMT" and the options. */
static void print_formatting(const struct create_args *a, uint64_t size)
{
    printf("Formatting '%s', fmt=%s", a->filename, a->format);
    const struct shown_option *shown = shown_options(a->format);
    for (const struct shown_option *s = shown; s->name; s++) {
        if (strcmp(s->name, "size") == 0) {
            printf(" size=%" PRIu64, size);
            continue;
        }
        char *value = given_value(a->options, s->name);
        if (value || s->qemu_default)
            print_option(s->name, value ? value : s->qemu_default, s->number);
        free(value);
    }
    const char *cursor = a->options;
    char *item;
    while ((item = cli_next_option_item(&cursor))) {
        const char *value = split_item(item);
        if (!is_shown(shown, item))
            print_option(item, value, false);
        free(item);
    }
    putchar('\n');
    fflush(stdout);
}

/*
 * Open the backing file, as qemu-img does before it announces anything: it
 * must exist (in the given format), and an image given no size takes its size.
 */
static int check_backing(const struct create_args *a, uint64_t *size)
{
    int rc = cli_try_backing(a->filename, a->backing, a->backing_fmt, a->safe ? VD_OPEN_SAFE : 0,
                             a->size ? NULL : size);
    return rc < 0 ? cli_lib_error(rc, "%s: Could not open backing image", a->filename)
                  : EXIT_SUCCESS;
}

/* The virtual size: given, or the backing file's; *size is left alone on failure. */
static int image_size(const struct create_args *a, uint64_t *size)
{
    if (a->backing && !cli_format_has_option(a->format, "backing_file"))
        return cli_error("%s: Backing file not supported for file format '%s'", a->filename,
                         a->format);
    if (a->size && !size_parse_arg("image size", a->size, INT64_MAX, size))
        return EXIT_FAILURE;
    if (a->backing && !a->unsafe_backing)
        return check_backing(a, size);
    if (!a->size)
        return cli_error("%s: Image creation needs a size parameter", a->filename);
    return EXIT_SUCCESS;
}

static int create_image(const struct create_args *a)
{
    if (cli_options_want_help(a->options))
        return cli_print_format_options(a->format);
    if (!a->filename)
        return cli_usage_error("Expecting image file name");
    if (!cli_format_known(a->format))
        return cli_error("%s: Unknown file format '%s'", a->filename, a->format);
    uint64_t size = 0;
    if (image_size(a, &size) != EXIT_SUCCESS)
        return EXIT_FAILURE;
    if (cli_check_create_target(a->filename) != EXIT_SUCCESS)
        return EXIT_FAILURE;
    if (!a->quiet)
        print_formatting(a, size);
    int rc = vd_create(a->filename, a->format, size, a->options,
                       (a->unsafe_backing ? VD_CREATE_UNSAFE_BACKING : 0) |
                       (a->safe ? VD_CREATE_CONFINED : 0));
    return rc < 0 ? cli_file_error(rc, a->filename) : EXIT_SUCCESS;
}

static int parse_and_create(int argc, char **argv, struct create_args *a)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    const char *backing = NULL, *backing_fmt = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:o:qb:F:u", long_options, NULL)) != -1) {
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
        case 'b':
            backing = optarg;
            break;
        case 'F':
            backing_fmt = optarg;
            break;
        case 'u':
            a->unsafe_backing = true;
            break;
        case CLI_OPT_SAFE:
            a->safe = true;
            break;
        default:
            return cli_option_fallback(&cmd_create, opt, argv);
        }
    }
    if (!cli_append_backing(&a->options, backing, backing_fmt))
        return cli_error("out of memory");
    a->backing = given_value(a->options, "backing_file");
    a->backing_fmt = given_value(a->options, "backing_fmt");
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
    free(args.backing);
    free(args.backing_fmt);
    return status;
}

const struct cli_command cmd_create = {
    .name = "create",
    .synopsis = "[-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] [--safe] "
                "filename [size]",
    .summary = "create a new disk image",
    .options =
        "  -f fmt          image format (default: raw)\n"
        "  -b backing_file create an overlay of this image (a relative name is relative\n"
        "                  to the new image's directory); same as -o backing_file=...\n"
        "  -F backing_fmt  format of the backing file (default: probe it; a backing\n"
        "                  file that probes as raw needs -F raw)\n"
        "  -u              do not open the backing file (it may not exist yet); needs\n"
        "                  -F and a size\n"
        "  -o options      format options, key=value[,key=value...]; ',,' is a literal\n"
        "                  comma; '-o help' lists the options of the format\n"
        "  -q              quiet: do not print the 'Formatting ...' line\n"
        "  --safe          the backing file (and its chain) must lie inside the new\n"
        "                  image's directory, reached without symbolic links\n"
        "  filename        the image to create; an existing file is overwritten\n"
        "  size            virtual size in bytes, or with a suffix k, M, G, T, P or E\n"
        "                  (powers of 1024; fractions like 1.5G are allowed); with a\n"
        "                  backing file it defaults to the backing file's size\n",
    .run = run_create,
};
