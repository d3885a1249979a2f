/*
 * Shared pieces of the vdisk command line tool: the command table entry,
 * the one error printer, option helpers and the image opener every command
 * uses. Exit codes follow qemu-img: 0 success, 1 any error (check adds its
 * own: 2, 3 and 63).
 */
#ifndef VDISK_CLI_H
#define VDISK_CLI_H

#include <libvdisk/libvdisk.h>
#include <stdbool.h>
#include <stdint.h>

#define CLI_NAME "vdisk"

/*
 * One command. run() gets the arguments after the tool name, so argv[0] is
 * the command name and getopt_long() starts at argv[1].
 */
struct cli_command {
    const char *name;
    const char *synopsis; /* arguments after the name, for usage lines */
    const char *summary;  /* one line for 'vdisk --help' */
    const char *options;  /* the option list for 'vdisk help NAME' */
    int (*run)(int argc, char **argv);
    /*
     * Whether the command takes --image-opts (as its qemu-img counterpart
     * does): its image argument is then an option string. --object is taken
     * by every command. main() removes both before run() (cli_take_global_options).
     */
    bool image_opts;
};

extern const struct cli_command cmd_create;
extern const struct cli_command cmd_info;
extern const struct cli_command cmd_convert;
extern const struct cli_command cmd_map;
extern const struct cli_command cmd_check;
extern const struct cli_command cmd_resize;
extern const struct cli_command cmd_snapshot;
extern const struct cli_command cmd_rebase;
extern const struct cli_command cmd_commit;
extern const struct cli_command cmd_compare;
extern const struct cli_command cmd_measure;
extern const struct cli_command cmd_dd;
extern const struct cli_command cmd_bench;
extern const struct cli_command cmd_amend;
extern const struct cli_command cmd_bitmap;

enum output_format { OUTPUT_HUMAN, OUTPUT_JSON };

/* Long options shared by commands; list them in each command's table. */
#define CLI_OPTION_HELP { "help", no_argument, NULL, 'h' }
#define CLI_OPTION_FORCE_SHARE { "force-share", no_argument, NULL, 'U' }
/*
 * --safe: open images with VD_OPEN_SAFE (and create overlays with
 * VD_CREATE_CONFINED). Shared long-only options take values from 512; a
 * command's own start at 256.
 */
enum { CLI_OPT_SAFE = 512 };
#define CLI_OPTION_SAFE { "safe", no_argument, NULL, CLI_OPT_SAFE }
/* Its line in a command's option list. */
#define CLI_HELP_SAFE \
    "  --safe          for untrusted images: open only files inside the image's\n" \
    "                  directory, with their recorded format (see vdisk(1))\n"

/* Their lines in a command's option list. */
#define CLI_HELP_OBJECT \
    "  --object secret,id=ID,file=PATH\n" \
    "                  define a secret: the passphrase of an encrypted image,\n" \
    "                  named by -o key-secret=ID or --image-opts key-secret=ID\n" \
    "                  (data=TEXT works too, but shows it in the process list;\n" \
    "                  format=base64 decodes either)\n"
#define CLI_HELP_IMAGE_OPTS \
    "  --image-opts    the image argument is an option string\n" \
    "                  'driver=FMT,file.filename=PATH[,force-share=on]\n" \
    "                  [,key-secret=ID]'\n"

/*
 * A secret defined with --object secret,id=ID,data=TEXT or file=PATH (the
 * file is read when the option is parsed, as qemu-img does, and its whole
 * content is the passphrase). Each is also handed to the library
 * (vd_secret_add()), which resolves key-secret=ID in create options;
 * --image-opts key-secret=ID opens an encrypted image with it.
 */
struct cli_secret {
    char *id;
    char *data;
    char *format; /* "raw" (default) or "base64", as given (data then decoded) */
    bool invalid; /* base64 that does not decode: an error when used, as in qemu-img */
};
extern struct cli_secret *cli_secrets;
extern size_t cli_secret_count;
/* The passphrase of the secret id, or NULL if none was defined. */
const char *cli_secret_data(const char *id);

/*
 * Remove the options every command shares from a command's arguments:
 * --object (every command) and --image-opts (where cmd->image_opts says).
 * Returns true when the command should run; otherwise false with *status
 * the exit status (an invalid --object reported, or --object help printed).
 */
bool cli_take_global_options(const struct cli_command *cmd, int *argc, char **argv,
                             int *status);

/* The arguments of commands that inspect one image (info, map, check). */
struct image_args {
    const char *format;        /* -f, or NULL to probe */
    enum output_format output; /* --output */
    uint32_t open_flags;       /* VD_OPEN_NO_LOCK with -U, VD_OPEN_SAFE with --safe */
    bool backing_chain;        /* --backing-chain */
    bool quiet;                /* -q */
    uint32_t check_flags;      /* VD_CHECK_REPAIR_* from -r */
    uint64_t start_offset;     /* --start-offset, 0 unless given */
    uint64_t max_length;       /* --max-length, UINT64_MAX unless given */
    const char *filename;
};

/* Options beyond "-f fmt --output=ofmt -U --safe" that a command accepts. */
#define IMAGE_ARGS_BACKING_CHAIN (1u << 0) /* --backing-chain */
#define IMAGE_ARGS_CHECK         (1u << 1) /* -r leaks|all, -T src_cache, -q */
#define IMAGE_ARGS_RANGE         (1u << 2) /* --start-offset=N, --max-length=N */

/*
 * Parse "[-f fmt] [--output=human|json] [-U] [--safe] filename" (and -h/--help),
 * plus the extra options named by the IMAGE_ARGS_* bits in extras.
 * Returns true when the command should run; otherwise false with *status
 * the exit status (help printed, or a usage error reported).
 */
bool cli_parse_image_args(const struct cli_command *cmd, unsigned extras, int argc, char **argv,
                          struct image_args *args, int *status);

/*
 * A qemu cache mode (-t, -T): none (or off), writeback, writethrough,
 * directsync or unsafe, as the library maps it (vd_cache_mode_flags()).
 * Replaces the cache flags in *open_flags (VD_OPEN_DIRECT,
 * VD_OPEN_WRITETHROUGH, VD_OPEN_NO_FLUSH) with the mode's. Returns false
 * for an unknown mode.
 */
bool cli_parse_cache_mode(const char *mode, uint32_t *open_flags);

/* Print "vdisk: <message>" on stderr; returns EXIT_FAILURE. */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Print "vdisk: <message>: <why>" where why is the library's message for
 * the failed call (vd_errmsg(), or vd_strerror(rc) when that is empty).
 * Returns EXIT_FAILURE.
 */
int cli_lib_error(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * cli_lib_error() for a failure about one file: "vdisk: <path>: <why>",
 * naming the file once when the library's message starts with it already.
 */
int cli_file_error(int rc, const char *path);

/* A usage error: the message plus a pointer to --help. Returns EXIT_FAILURE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Report the option getopt_long() just refused: ':' (missing argument) or
 * '?' (unknown). Requires opterr = 0 and optstrings that start with ':'.
 * Returns EXIT_FAILURE.
 */
int cli_bad_option(int opt, char **argv);

/*
 * Handle a getopt_long() result that no case of a command took: 'h' prints
 * the command's help (EXIT_SUCCESS), anything else is cli_bad_option().
 */
int cli_option_fallback(const struct cli_command *cmd, int opt, char **argv);

/* Print the help of one command on stdout. Returns EXIT_SUCCESS. */
int cli_command_help(const struct cli_command *cmd);

/* Whether the library knows this format name. */
bool cli_format_known(const char *format);
/* Whether a (known) format has this create option ("backing_file", ...). */
bool cli_format_has_option(const char *format, const char *option);

/*
 * -o option lists ("key=value,key=value"; ",," is a literal comma).
 * cli_append_options() joins repeated -o arguments as qemu-img does;
 * *list starts NULL and is malloc'd. Returns false when out of memory.
 */
bool cli_append_options(char **list, const char *more);
/* Append one key=value item, doubling the commas of value. */
bool cli_append_option(char **list, const char *key, const char *value);
/* Append -b/-B and -F (either may be NULL) as backing_file= and backing_fmt= items. */
bool cli_append_backing(char **list, const char *backing, const char *backing_fmt);
/* Whether an option list asks for help ("help" or "?" as an item). */
bool cli_options_want_help(const char *list);
/*
 * The next item of an option list, unescaped, as a malloc'd string; NULL
 * at the end (or when out of memory). *cursor starts at the list.
 */
char *cli_next_option_item(const char **cursor);
/* List the create options of a format ('-o help'). */
int cli_print_format_options(const char *format);

/*
 * Open the image a command names (format NULL to probe) or print "Could not
 * open" and return NULL. With --image-opts, image is an option string
 * (driver=, file.filename=, ...) and format must be NULL. flags are
 * VD_OPEN_* flags; VD_OPEN_NO_LOCK (-U) with VD_OPEN_RDWR is refused as
 * qemu-img refuses it.
 */
vd_image *cli_open_image(const char *image, const char *format, uint32_t flags);
/* cli_open_image() of an internal snapshot (its id or name), read-only; NULL: the image. */
vd_image *cli_open_snapshot(const char *image, const char *format, uint32_t flags,
                            const char *snapshot);
/* How deep in a chain --image-opts may name secrets: backing.backing.(...)key-secret=ID. */
#define CLI_SECRET_DEPTHS 16
/* What an --image-opts string says: the file, its format, open flags and secrets. */
struct cli_image_opts {
    char *driver;   /* or NULL to probe */
    char *filename;
    uint32_t flags; /* VD_OPEN_NO_LOCK for force-share=on or file.locking=off */
    /* by depth in the chain: the passphrase [backing.]...key-secret=ID names (a
       cli_secrets entry), or NULL; the image's own (depth 0) serves where one is missing */
    const char *secrets[CLI_SECRET_DEPTHS];
};
/*
 * Parse an --image-opts string ("driver=FMT,file.filename=PATH,..."), as
 * cli_open_image() takes it, reporting what is wrong. Free the result with
 * cli_image_opts_free(), also when this fails.
 */
bool cli_parse_image_opts(const char *opts, struct cli_image_opts *o);
void cli_image_opts_free(struct cli_image_opts *o);
/* cli_open_image() of a plain path, whatever --image-opts says (an output file). */
vd_image *cli_open_path(const char *path, const char *format, uint32_t flags);


/*
 * Check that creating an image at path harms nothing: it must not exist or
 * be a regular file. (vd_create() removes the path when it fails, which
 * must never happen to a device node.) Returns EXIT_SUCCESS or reports the
 * problem and returns EXIT_FAILURE.
 */
int cli_check_create_target(const char *path);

/*
 * The path a backing file name refers to: relative names are relative to
 * the directory of the image that records them (as qemu resolves them).
 * Returns a malloc'd string or NULL when out of memory.
 */
char *cli_resolve_backing(const char *image_path, const char *backing);

/*
 * Open the backing file an image at image_path would get (name resolved as
 * cli_resolve_backing() does, format NULL to probe) to see that it opens,
 * as qemu-img does before it changes anything; with size, also take its
 * virtual size. flags: VD_OPEN_SAFE to open it as a safe handle would (only
 * inside image_path's directory). Returns 0 or a negative VD_E* code with
 * vd_errmsg() set, for the caller to report in its own words.
 */
int cli_try_backing(const char *image_path, const char *backing, const char *format,
                    uint32_t flags, uint64_t *size);

#endif /* VDISK_CLI_H */
