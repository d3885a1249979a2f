/* vdisk bitmap (--add | --remove | --clear | --enable | --disable | --merge SOURCE)...
 *              [-g granularity] [-b source_file [-F source_fmt]] [-f fmt] [--safe] filename bitmap */
#include "cli.h"
#include "size.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

enum bitmap_op { OP_ADD, OP_REMOVE, OP_CLEAR, OP_ENABLE, OP_DISABLE, OP_MERGE };
static const char *const op_names[] = { "add", "remove", "clear", "enable", "disable", "merge" };

/* The most actions one command line may give (qemu-img keeps a list; each option once suffices). */
#define MAX_ACTIONS 16

struct bitmap_action {
    enum bitmap_op op;
    const char *source; /* --merge: the source bitmap */
};

struct bitmap_args {
    const char *format, *src_file, *src_format;
    uint32_t open_flags;       /* VD_OPEN_SAFE with --safe */
    uint64_t granularity;      /* -g, 0: the default */
    struct bitmap_action actions[MAX_ACTIONS];
    size_t nactions;
    bool add, merge;
    const char *filename, *name;
};

/* --merge: bitmap source of -b file (-F fmt), or of the image itself, into the bitmap. */
static int merge(vd_image *img, const struct bitmap_args *a, const char *source)
{
    vd_image *src = img;
    if (a->src_file && !(src = cli_open_image(a->src_file, a->src_format, a->open_flags)))
        return EXIT_FAILURE;
    int rc = vd_bitmap_merge(img, a->name, src, source, 0);
    int status = rc < 0 ? cli_lib_error(rc, "Operation merge on bitmap %s failed", a->name)
                        : EXIT_SUCCESS;
    if (src != img)
        vd_close(src);
    return status;
}

static int run_action(vd_image *img, const struct bitmap_args *a, const struct bitmap_action *act)
{
    int rc = 0;
    switch (act->op) {
    case OP_ADD:
        rc = vd_bitmap_add(img, a->name, a->granularity, 0);
        break;
    case OP_REMOVE:
        rc = vd_bitmap_remove(img, a->name, 0);
        break;
    case OP_CLEAR:
        rc = vd_bitmap_clear(img, a->name, 0);
        break;
    case OP_ENABLE:
        rc = vd_bitmap_enable(img, a->name, 0);
        break;
    case OP_DISABLE:
        rc = vd_bitmap_disable(img, a->name, 0);
        break;
    case OP_MERGE:
        return merge(img, a, act->source);
    }
    if (rc < 0)
        return cli_lib_error(rc, "Operation %s on bitmap %s failed", op_names[act->op], a->name);
    return EXIT_SUCCESS;
}

static int bitmap(const struct bitmap_args *a)
{
    vd_image *img = cli_open_image(a->filename, a->format, a->open_flags | VD_OPEN_RDWR);
    if (!img)
        return EXIT_FAILURE;
    int status = EXIT_SUCCESS;
    for (size_t i = 0; i < a->nactions && status == EXIT_SUCCESS; i++)
        status = run_action(img, a, &a->actions[i]);
    int rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    return status;
}

static bool add_action(struct bitmap_args *a, enum bitmap_op op, const char *source)
{
    if (a->nactions == MAX_ACTIONS) {
        cli_usage_error("too many actions");
        return false;
    }
    a->actions[a->nactions++] = (struct bitmap_action){ op, source };
    return true;
}

enum { OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE };

/* The checks of qemu-img bitmap, in its order and words. */
static int check_args(struct bitmap_args *a, int argc, char **argv)
{
    if (!a->nactions)
        return cli_error("Need at least one of --add, --remove, --clear, --enable, --disable, "
                         "or --merge");
    if (a->granularity && !a->add)
        return cli_error("granularity only supported with --add");
    if (a->src_format && !a->src_file)
        return cli_error("-F only supported with -b");
    if (a->src_file && !a->merge)
        return cli_error("Merge bitmap source file only supported with --merge");
    if (optind != argc - 2)
        return cli_error("Expecting filename and bitmap name");
    a->filename = argv[optind];
    a->name = argv[optind + 1];
    return EXIT_SUCCESS;
}

static int run_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_SAFE,
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    struct bitmap_args args = { 0 };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:g:b:F:", long_options, NULL)) != -1) {
        bool ok = true;
        switch (opt) {
        case 'f':
            args.format = optarg;
            break;
        case 'b':
            args.src_file = optarg;
            break;
        case 'F':
            args.src_format = optarg;
            break;
        case 'g':
            ok = size_parse_arg("granularity", optarg, UINT64_MAX, &args.granularity);
            if (ok && !args.granularity) {
                cli_error("Invalid granularity specified");
                ok = false;
            }
            break;
        case CLI_OPT_SAFE:
            args.open_flags |= VD_OPEN_SAFE;
            break;
        case OPT_ADD:
            args.add = true;
            ok = add_action(&args, OP_ADD, NULL);
            break;
        case OPT_REMOVE:
        case OPT_CLEAR:
        case OPT_ENABLE:
        case OPT_DISABLE:
            ok = add_action(&args, (enum bitmap_op)(OP_REMOVE + (opt - OPT_REMOVE)), NULL);
            break;
        case OPT_MERGE:
            args.merge = true;
            ok = add_action(&args, OP_MERGE, optarg);
            break;
        default:
            return cli_option_fallback(&cmd_bitmap, opt, argv);
        }
        if (!ok)
            return EXIT_FAILURE;
    }
    int status = check_args(&args, argc, argv);
    return status == EXIT_SUCCESS ? bitmap(&args) : status;
}

const struct cli_command cmd_bitmap = {
    .name = "bitmap",
    .synopsis = "(--add | --remove | --clear | --enable | --disable | --merge source)... "
                "[-g granularity] [-b source_file [-F source_fmt]] [-f fmt] [--safe] "
                "filename bitmap",
    .summary = "add, remove, clear, enable, disable or merge persistent dirty bitmaps",
    .options =
        "  --add           add an empty, enabled bitmap\n"
        "  --remove        remove the bitmap\n"
        "  --clear         mark every bit of the bitmap clean\n"
        "  --enable        let the bitmap record writes\n"
        "  --disable       stop the bitmap recording writes\n"
        "  --merge source  mark dirty what bitmap 'source' marks dirty\n"
        "  -g granularity  bytes per bit for --add (power of 2, 512 to 2G; default:\n"
        "                  the cluster size, at least 4k)\n"
        "  -b source_file  --merge reads 'source' from this image\n"
        "  -F source_fmt   the format of source_file (default: probe)\n"
        "  -f fmt          image format (default: probe the file)\n"
        CLI_HELP_SAFE
        "  filename        the image, opened read-write; actions run in the order given\n"
        "  bitmap          the name of the bitmap to act on\n",
    .run = run_bitmap,
    .image_opts = true,
};
