/* The error printer, option helpers and image opener shared by all commands. */
#include "cli.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void print_error_line(const char *fmt, va_list ap, const char *why)
{
    /* stdout may hold a half line (a progress bar, "Formatting ..."): keep order */
    fflush(stdout);
    fputs(CLI_NAME ": ", stderr);
    vfprintf(stderr, fmt, ap);
    if (why)
        fprintf(stderr, ": %s", why);
    fputc('\n', stderr);
}

int cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_error_line(fmt, ap, NULL);
    va_end(ap);
    return EXIT_FAILURE;
}

int cli_lib_error(int rc, const char *fmt, ...)
{
    const char *why = vd_errmsg();
    if (!why || !*why)
        why = vd_strerror(rc);
    va_list ap;
    va_start(ap, fmt);
    print_error_line(fmt, ap, why);
    va_end(ap);
    return EXIT_FAILURE;
}

int cli_file_error(int rc, const char *path)
{
    const char *why = vd_errmsg();
    size_t n = strlen(path);
    if (why && strncmp(why, path, n) == 0 && strncmp(why + n, ": ", 2) == 0)
        return cli_error("%s", why);
    return cli_lib_error(rc, "%s", path);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_error_line(fmt, ap, NULL);
    va_end(ap);
    fputs("Try '" CLI_NAME " --help' for more information\n", stderr);
    return EXIT_FAILURE;
}

int cli_bad_option(int opt, char **argv)
{
    if (opt == ':')
        return cli_usage_error("missing argument for option '%s'", argv[optind - 1]);
    return cli_usage_error("unrecognized option '%s'", argv[optind - 1]);
}

int cli_option_fallback(const struct cli_command *cmd, int opt, char **argv)
{
    return opt == 'h' ? cli_command_help(cmd) : cli_bad_option(opt, argv);
}

int cli_command_help(const struct cli_command *cmd)
{
    printf("usage: " CLI_NAME " %s %s\n\n%s.\n\n%s", cmd->name, cmd->synopsis, cmd->summary,
           cmd->options);
    return EXIT_SUCCESS;
}

static bool parse_output(const char *arg, enum output_format *out)
{
    if (strcmp(arg, "human") == 0)
        *out = OUTPUT_HUMAN;
    else if (strcmp(arg, "json") == 0)
        *out = OUTPUT_JSON;
    else
        return false;
    return true;
}

static bool parse_repair(const char *arg, uint32_t *flags)
{
    if (strcmp(arg, "leaks") == 0)
        *flags = VD_CHECK_REPAIR_LEAKS;
    else if (strcmp(arg, "all") == 0)
        *flags = VD_CHECK_REPAIR_LEAKS | VD_CHECK_REPAIR_ALL;
    else
        return false;
    return true;
}

bool cli_parse_image_args(const struct cli_command *cmd, unsigned extras, int argc, char **argv,
                          struct image_args *args, int *status)
{
    enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN }; /* beyond every short option */
    const bool check = extras & IMAGE_ARGS_CHECK;
    struct option long_options[] = {
        CLI_OPTION_HELP,
        CLI_OPTION_FORCE_SHARE,
        CLI_OPTION_SAFE,
        { "output", required_argument, NULL, OPT_OUTPUT },
        { NULL, 0, NULL, 0 }, /* room for --backing-chain */
        { NULL, 0, NULL, 0 },
    };
    if (extras & IMAGE_ARGS_BACKING_CHAIN)
        long_options[4] = (struct option){ "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN };
    *args = (struct image_args){ .output = OUTPUT_HUMAN };
    *status = EXIT_FAILURE;
    bool src_flush; /* the image is only read: any cache mode reads the same */
    int opt;
    while ((opt = getopt_long(argc, argv, check ? ":hf:Ur:T:q" : ":hf:U", long_options,
                              NULL)) != -1) {
        switch (opt) {
        case 'f':
            args->format = optarg;
            break;
        case 'U':
            args->open_flags |= VD_OPEN_NO_LOCK;
            break;
        case CLI_OPT_SAFE:
            args->open_flags |= VD_OPEN_SAFE;
            break;
        case 'r':
            if (!parse_repair(optarg, &args->check_flags)) {
                cli_usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s",
                                optarg);
                return false;
            }
            break;
        case 'T':
            if (!cli_parse_cache_mode(optarg, &src_flush)) {
                cli_error("Invalid source cache option: %s", optarg);
                return false;
            }
            break;
        case 'q':
            args->quiet = true;
            break;
        case OPT_OUTPUT:
            if (!parse_output(optarg, &args->output)) {
                cli_error("--output must be used with human or json as argument.");
                return false;
            }
            break;
        case OPT_BACKING_CHAIN:
            args->backing_chain = true;
            break;
        default:
            *status = cli_option_fallback(cmd, opt, argv);
            return false;
        }
    }
    if (optind != argc - 1) {
        cli_usage_error("Expecting one image file name");
        return false;
    }
    args->filename = argv[optind];
    return true;
}

bool cli_parse_cache_mode(const char *mode, bool *flush)
{
    /* the first never syncs; "off" is qemu's other name for "none" */
    static const char *const modes[] = { "unsafe", "none", "off", "writeback", "writethrough",
                                         "directsync" };
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (strcmp(mode, modes[i]) == 0) {
            *flush = i > 0;
            return true;
        }
    }
    return false;
}

bool cli_format_known(const char *format)
{
    for (size_t i = 0; vd_format_name(i); i++)
        if (strcmp(vd_format_name(i), format) == 0)
            return true;
    return false;
}

bool cli_format_has_option(const char *format, const char *option)
{
    const char *name, *help, *default_value;
    for (size_t i = 0; vd_format_option(format, i, &name, &help, &default_value) == 0; i++)
        if (strcmp(name, option) == 0)
            return true;
    return false;
}

vd_image *cli_open_snapshot(const char *path, const char *format, uint32_t flags,
                            const char *snapshot)
{
    if ((flags & VD_OPEN_RDWR) && (flags & VD_OPEN_NO_LOCK)) {
        cli_error("Could not open '%s': force-share=on can only be used with read-only images",
                  path);
        return NULL;
    }
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.flags = flags;
    opts.format = format;
    opts.snapshot = snapshot;
    vd_image *img;
    int rc = vd_open_ext(&img, path, &opts);
    if (rc < 0) {
        cli_lib_error(rc, "Could not open '%s'", path);
        return NULL;
    }
    return img;
}

vd_image *cli_open_image(const char *path, const char *format, uint32_t flags)
{
    return cli_open_snapshot(path, format, flags, NULL);
}

int cli_check_create_target(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return cli_error("%s: not a regular file; images are created in regular files only", path);
    return EXIT_SUCCESS;
}

char *cli_resolve_backing(const char *image_path, const char *backing)
{
    const char *slash = strrchr(image_path, '/');
    if (backing[0] == '/' || !slash)
        return strdup(backing);
    char *path;
    int dir_len = (int)(slash - image_path + 1);
    return asprintf(&path, "%.*s%s", dir_len, image_path, backing) < 0 ? NULL : path;
}

int cli_try_backing(const char *image_path, const char *backing, const char *format,
                    uint32_t flags, uint64_t *size)
{
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.flags = flags | VD_OPEN_NO_LOCK | VD_OPEN_NO_BACKING;
    opts.format = format;
    opts.relative_to = image_path;
    vd_image *img = NULL;
    int rc = vd_open_ext(&img, backing, &opts);
    if (rc == 0 && size)
        rc = vd_get_size(img, size);
    vd_close(img);
    return rc;
}

bool cli_append_options(char **list, const char *more)
{
    char *joined;
    int n = *list ? asprintf(&joined, "%s,%s", *list, more) : asprintf(&joined, "%s", more);
    if (n < 0)
        return false;
    free(*list);
    *list = joined;
    return true;
}

bool cli_append_option(char **list, const char *key, const char *value)
{
    size_t commas = 0;
    for (const char *p = value; *p; p++)
        commas += *p == ',';
    size_t key_len = strlen(key), value_len = strlen(value);
    char *item = malloc(key_len + 1 + value_len + commas + 1), *out = item;
    if (!item)
        return false;
    out += sprintf(out, "%s=", key);
    for (const char *p = value; *p; p++) {
        *out++ = *p;
        if (*p == ',')
            *out++ = ',';
    }
    *out = '\0';
    bool ok = cli_append_options(list, item);
    free(item);
    return ok;
}

bool cli_append_backing(char **list, const char *backing, const char *backing_fmt)
{
    return (!backing || cli_append_option(list, "backing_file", backing)) &&
           (!backing_fmt || cli_append_option(list, "backing_fmt", backing_fmt));
}

char *cli_next_option_item(const char **cursor)
{
    const char *p = *cursor;
    if (!p || !*p)
        return NULL;
    char *item = malloc(strlen(p) + 1), *out = item;
    if (!item)
        return NULL;
    for (; *p; p++) {
        if (*p == ',' && p[1] != ',')
            break;
        *out++ = *p;
        p += *p == ','; /* ",," stands for one comma */
    }
    *out = '\0';
    *cursor = *p ? p + 1 : p;
    return item;
}

bool cli_options_want_help(const char *list)
{
    bool help = false;
    char *item;
    while (!help && (item = cli_next_option_item(&list))) {
        help = strcmp(item, "help") == 0 || strcmp(item, "?") == 0;
        free(item);
    }
    return help;
}

int cli_print_format_options(const char *format)
{
    if (!cli_format_known(format))
        return cli_error("Unknown file format '%s'", format);
    printf("Supported %s options:\n", format);
    const char *name, *help, *default_value;
    for (size_t i = 0; vd_format_option(format, i, &name, &help, &default_value) == 0; i++) {
        printf("  %-22s - %s", name, help);
        if (default_value)
            printf(" (default: %s)", default_value);
        putchar('\n');
    }
    return EXIT_SUCCESS;
}
