/* The error printer, option helpers and image opener shared by all commands. */
#include "cli.h"
#include "size.h"

#include <ctype.h>
#include <errno.h>
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
    printf("\nOptions every command takes:\n%s%s",
           cmd->image_opts ? CLI_HELP_IMAGE_OPTS : "", CLI_HELP_OBJECT);
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
    enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN, OPT_START_OFFSET, OPT_MAX_LENGTH };
    const bool check = extras & IMAGE_ARGS_CHECK;
    struct option long_options[] = {
        CLI_OPTION_HELP,
        CLI_OPTION_FORCE_SHARE,
        CLI_OPTION_SAFE,
        { "output", required_argument, NULL, OPT_OUTPUT },
        { NULL, 0, NULL, 0 }, /* room for --backing-chain, or --start-offset and --max-length */
        { NULL, 0, NULL, 0 },
        { NULL, 0, NULL, 0 },
    };
    if (extras & IMAGE_ARGS_BACKING_CHAIN)
        long_options[4] = (struct option){ "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN };
    if (extras & IMAGE_ARGS_RANGE) {
        long_options[4] = (struct option){ "start-offset", required_argument, NULL,
                                           OPT_START_OFFSET };
        long_options[5] = (struct option){ "max-length", required_argument, NULL,
                                           OPT_MAX_LENGTH };
    }
    *args = (struct image_args){ .output = OUTPUT_HUMAN, .max_length = UINT64_MAX };
    *status = EXIT_FAILURE;
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
            if (!cli_parse_cache_mode(optarg, &args->open_flags)) {
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
        case OPT_START_OFFSET:
            if (!size_parse_arg("start offset", optarg, INT64_MAX, &args->start_offset))
                return false;
            break;
        case OPT_MAX_LENGTH:
            if (!size_parse_arg("max length", optarg, INT64_MAX, &args->max_length))
                return false;
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

bool cli_parse_cache_mode(const char *mode, uint32_t *open_flags)
{
    uint32_t flags;
    if (vd_cache_mode_flags(mode, &flags) < 0)
        return false;
    *open_flags = (*open_flags & ~(VD_OPEN_DIRECT | VD_OPEN_WRITETHROUGH | VD_OPEN_NO_FLUSH)) |
                  flags;
    return true;
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

/* --image-opts, as main() found it for the running command. */
static bool image_opts_mode;

struct cli_secret *cli_secrets;
size_t cli_secret_count;

/* qemu's identifiers: letters, digits, '-', '.', '_', starting with a letter. */
static bool is_identifier(const char *id)
{
    if (!isalpha((unsigned char)id[0]))
        return false;
    for (const char *p = id; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p))
            return false;
    return true;
}

/* The whole content of a secret's file, malloc'd; NULL (reported) on failure. */
static char *read_secret_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    size_t size = 0;
    if (f) {
        FILE *mem = open_memstream(&data, &size);
        int c;
        while (mem && (c = getc(f)) != EOF)
            putc(c, mem);
        if (!mem || ferror(f) || fclose(mem) != 0) {
            free(data);
            data = NULL;
        }
        fclose(f);
    }
    if (!data)
        cli_error("Unable to read %s: %s", path, strerror(errno));
    return data;
}

/* Take one "key=value" item of a secret definition into s; false (reported) if bad. */
static bool take_secret_item(char *item, struct cli_secret *s, char **file, bool *typed)
{
    char *eq = strchr(item, '=');
    if (!eq) { /* the first item may name the type without "qom-type=" */
        cli_error("Parameter '%s' is unexpected", item);
        return false;
    }
    *eq = '\0';
    const char *value = eq + 1;
    char **slot = strcmp(item, "id") == 0       ? &s->id
                  : strcmp(item, "data") == 0   ? &s->data
                  : strcmp(item, "file") == 0   ? file
                  : strcmp(item, "format") == 0 ? &s->format
                                                : NULL;
    if (strcmp(item, "qom-type") == 0 && strcmp(value, "secret") == 0)
        return *typed = true;
    if (strcmp(item, "qom-type") == 0) {
        cli_error("Parameter 'qom-type' does not accept value '%s'", value);
        return false;
    }
    if (!slot) {
        cli_error("Parameter '%s' is unexpected", item);
        return false;
    }
    if (slot == &s->format && strcmp(value, "raw") != 0 && strcmp(value, "base64") != 0) {
        cli_error("Parameter 'format' does not accept value '%s'", value);
        return false;
    }
    free(*slot);
    if (!(*slot = strdup(value)))
        cli_error("out of memory");
    return *slot != NULL;
}

static bool check_secret(struct cli_secret *s, char *file)
{
    if (!s->id) {
        cli_error("Parameter 'id' is missing");
        return false;
    }
    if (!is_identifier(s->id)) {
        cli_error("Parameter 'id' expects an identifier");
        fputs("Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.\n",
              stderr);
        return false;
    }
    if (file && s->data) {
        cli_error("'file' and 'data' are mutually exclusive");
        return false;
    }
    if (!file && !s->data) {
        cli_error("Either 'file' or 'data' must be provided");
        return false;
    }
    /* data= puts the passphrase in argv, where other users can read it: qemu-img
       takes it silently, and so do we (vdisk(1) says to use file=) */
    for (size_t i = 0; i < cli_secret_count; i++) {
        if (strcmp(cli_secrets[i].id, s->id) == 0) {
            cli_error("attempt to add duplicate property '%s' to object (type 'container')",
                      s->id);
            return false;
        }
    }
    return s->data || (s->data = read_secret_file(file));
}

/*
 * Decode base64 text in place (format=base64); false if it is not valid
 * base64 or decodes to a NUL byte (a passphrase is a C string).
 */
static bool decode_base64(char *text)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(text), out = 0;
    while (len && text[len - 1] == '=')
        len--;
    if (len % 4 == 1 || strlen(text) % 4)
        return false;
    uint32_t bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = text[i] ? strchr(alphabet, text[i]) : NULL;
        if (!p)
            return false;
        bits = bits << 6 | (uint32_t)(p - alphabet);
        if (i % 4 == 3 || i == len - 1) {
            size_t n = i % 4; /* 3 sextets give 2 bytes, 2 give 1, 4 give 3 */
            bits <<= 6 * (3 - n);
            for (size_t b = 0; b < n; b++)
                text[out++] = (char)(bits >> (16 - 8 * b));
            bits = 0;
        }
    }
    text[out] = '\0';
    return memchr(text, '\0', out) == NULL;
}

/* Hand a secret to the library, which resolves key-secret=ID in create options. */
static bool define_in_library(struct cli_secret *s)
{
    if (s->format && strcmp(s->format, "base64") == 0 && !decode_base64(s->data)) {
        /* qemu-img reports a bad secret only when an image uses it */
        s->invalid = true;
        return true;
    }
    int rc = vd_secret_add(s->id, s->data, strlen(s->data));
    return rc == 0 || !cli_lib_error(rc, "secret '%s'", s->id);
}

/*
 * --object: only the "secret" type (qemu-img knows more, for its other
 * block drivers); "secret,id=..." or "qom-type=secret,id=...".
 */
static bool add_object(const char *def)
{
    const char *cursor = def;
    char *item = cli_next_option_item(&cursor), *file = NULL;
    struct cli_secret s = { 0 };
    bool ok = true, typed = item && strcmp(item, "secret") == 0;
    if (item && !typed && !strchr(item, '='))
        ok = !cli_error("Parameter 'qom-type' does not accept value '%s'", item);
    else if (item && !typed)
        ok = take_secret_item(item, &s, &file, &typed);
    free(item);
    while (ok && (item = cli_next_option_item(&cursor))) {
        ok = take_secret_item(item, &s, &file, &typed);
        free(item);
    }
    if (ok && !typed)
        ok = !cli_error("Parameter 'qom-type' is missing");
    ok = ok && check_secret(&s, file);
    free(file);
    struct cli_secret *grown = NULL;
    if (ok && !(grown = realloc(cli_secrets, (cli_secret_count + 1) * sizeof *grown)))
        ok = !cli_error("out of memory");
    if (!ok) {
        free(s.id);
        free(s.data);
        free(s.format);
        return false;
    }
    cli_secrets = grown;
    cli_secrets[cli_secret_count] = s;
    return define_in_library(&cli_secrets[cli_secret_count++]);
}

bool cli_take_global_options(const struct cli_command *cmd, int *argc, char **argv,
                             int *status)
{
    *status = EXIT_FAILURE;
    image_opts_mode = false;
    int kept = 1; /* argv[0] is the command name */
    for (int i = 1; i < *argc; i++) {
        const char *arg = argv[i], *def = NULL;
        if (strcmp(arg, "--") == 0) { /* the rest are operands */
            while (i < *argc)
                argv[kept++] = argv[i++];
            break;
        }
        if (cmd->image_opts && strcmp(arg, "--image-opts") == 0) {
            image_opts_mode = true;
            continue;
        }
        if (strncmp(arg, "--object=", 9) == 0)
            def = arg + 9;
        else if (strcmp(arg, "--object") == 0 && i + 1 < *argc)
            def = argv[++i];
        else if (strcmp(arg, "--object") == 0) {
            cli_usage_error("missing argument for option '--object'");
            return false;
        }
        if (!def) {
            argv[kept++] = argv[i];
            continue;
        }
        if (strcmp(def, "help") == 0) {
            printf("List of user creatable objects:\n  secret\n");
            *status = EXIT_SUCCESS;
            return false;
        }
        if (!add_object(def))
            return false;
    }
    argv[kept] = NULL;
    *argc = kept;
    return true;
}

/* vd_secret_fn for open_path(): the passphrase --image-opts named for that depth of the chain. */
static int secret_by_depth(void *ctx, const char *path, unsigned depth, char *buf, size_t size)
{
    (void)path;
    const char *const *secrets = ctx;
    const char *secret = depth < CLI_SECRET_DEPTHS ? secrets[depth] : NULL;
    if (!secret)
        return 0; /* none named: the image's own secret serves */
    size_t len = strlen(secret);
    if (len >= size)
        return VD_ETOOBIG;
    memcpy(buf, secret, len);
    return (int)len;
}

/* secrets: NULL, or CLI_SECRET_DEPTHS passphrases by depth in the chain (see cli_image_opts). */
static vd_image *open_path(const char *path, const char *shown, const char *format,
                           uint32_t flags, const char *snapshot, const char *const *secrets)
{
    if ((flags & VD_OPEN_RDWR) && (flags & VD_OPEN_NO_LOCK)) {
        cli_error("Could not open '%s': force-share=on can only be used with read-only images",
                  shown);
        return NULL;
    }
    vd_open_opts opts = VD_OPEN_OPTS_INIT;
    opts.flags = flags;
    opts.format = format;
    opts.snapshot = snapshot;
    if (secrets) {
        opts.secret = secrets[0];
        opts.secret_fn = secret_by_depth;
        opts.secret_ctx = (void *)secrets;
    }
    vd_image *img;
    int rc = vd_open_ext(&img, path, &opts);
    if (rc < 0) {
        cli_lib_error(rc, "Could not open '%s'", shown);
        return NULL;
    }
    return img;
}

/* An on/off value of an --image-opts item, as qemu's boolean options take it. */
static bool parse_on_off(const char *opts, const char *key, const char *value, bool *out)
{
    if (strcmp(value, "on") == 0 || strcmp(value, "off") == 0) {
        *out = value[1] == 'n';
        return true;
    }
    cli_error("Could not open '%s': Parameter '%s' expects 'on' or 'off'", opts, key);
    return false;
}

/* Take one "key=value" item of an --image-opts string into o. */
static bool set_text(char **slot, const char *value)
{
    free(*slot);
    if (!(*slot = strdup(value)))
        cli_error("out of memory");
    return *slot != NULL;
}

const char *cli_secret_data(const char *id)
{
    for (size_t i = 0; i < cli_secret_count; i++)
        if (strcmp(cli_secrets[i].id, id) == 0 && !cli_secrets[i].invalid)
            return cli_secrets[i].data;
    return NULL;
}

static bool take_secret(const char *opts, const char *id, unsigned depth, struct cli_image_opts *o)
{
    if (depth >= CLI_SECRET_DEPTHS) {
        cli_error("Could not open '%s': secrets can be named for %d images of a chain at most",
                  opts, CLI_SECRET_DEPTHS);
        return false;
    }
    o->secrets[depth] = cli_secret_data(id);
    if (!o->secrets[depth])
        cli_error("Could not open '%s': No valid secret with id '%s'", opts, id);
    return o->secrets[depth] != NULL;
}

/* Whether item names a secret ([backing.]...[encrypt.]key-secret), and for which depth. */
static bool names_secret(const char *item, unsigned *depth)
{
    *depth = 0;
    while (strncmp(item, "backing.", 8) == 0) {
        item += 8;
        ++*depth;
    }
    /* luks names it key-secret, qcow2 and qcow encrypt.key-secret */
    return strcmp(item, "key-secret") == 0 || strcmp(item, "encrypt.key-secret") == 0;
}

static bool take_image_opt(const char *opts, char *item, struct cli_image_opts *o)
{
    char *eq = strchr(item, '=');
    const char *value = eq ? eq + 1 : "on"; /* a bare key means "on", as in qemu */
    if (eq)
        *eq = '\0';
    bool on;
    if (strcmp(item, "driver") == 0)
        return set_text(&o->driver, value);
    if (strcmp(item, "file.filename") == 0 || strcmp(item, "filename") == 0)
        return set_text(&o->filename, value);
    if (strcmp(item, "file.driver") == 0 && strcmp(value, "file") == 0)
        return true;
    unsigned depth;
    if (names_secret(item, &depth))
        return take_secret(opts, value, depth, o);
    if (strcmp(item, "file.driver") == 0) {
        cli_error("Could not open '%s': libvdisk reads images from files only (file.driver=file)",
                  opts);
        return false;
    }
    if (strcmp(item, "force-share") == 0 || strcmp(item, "file.locking") == 0) {
        if (!parse_on_off(opts, item, value, &on))
            return false;
        /* force-share=on and file.locking=off both mean: no locks */
        if (on == (strcmp(item, "force-share") == 0))
            o->flags |= VD_OPEN_NO_LOCK;
        return true;
    }
    cli_error("Could not open '%s': Block format '%s' does not support the option '%s'", opts,
              o->driver ? o->driver : "file", item);
    return false;
}

bool cli_parse_image_opts(const char *opts, struct cli_image_opts *o)
{
    *o = (struct cli_image_opts){ 0 };
    const char *cursor = opts;
    char *item;
    bool ok = true;
    while (ok && (item = cli_next_option_item(&cursor))) {
        ok = take_image_opt(opts, item, o);
        free(item);
    }
    if (ok && !o->filename) {
        cli_error("Could not open '%s': A block device must be specified for \"file\"", opts);
        ok = false;
    }
    return ok;
}

vd_image *cli_open_snapshot(const char *image, const char *format, uint32_t flags,
                            const char *snapshot)
{
    if (!image_opts_mode)
        return open_path(image, image, format, flags, snapshot, NULL);
    if (format) {
        cli_error("--image-opts and --format are mutually exclusive");
        return NULL;
    }
    struct cli_image_opts o;
    vd_image *img = NULL;
    if (cli_parse_image_opts(image, &o))
        img = open_path(o.filename, image, o.driver, flags | o.flags, snapshot, o.secrets);
    cli_image_opts_free(&o);
    return img;
}

void cli_image_opts_free(struct cli_image_opts *o)
{
    free(o->driver);
    free(o->filename);
}

vd_image *cli_open_image(const char *image, const char *format, uint32_t flags)
{
    return cli_open_snapshot(image, format, flags, NULL);
}

vd_image *cli_open_path(const char *path, const char *format, uint32_t flags)
{
    return open_path(path, path, format, flags, NULL, NULL);
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
