/* vdisk snapshot [-f fmt] [-U] [-q] [--safe] [-l | -a snapshot | -c snapshot | -d snapshot]
 *                filename */
#include "cli.h"
#include "snapshots.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

enum snapshot_action { ACTION_NONE, ACTION_LIST, ACTION_CREATE, ACTION_APPLY, ACTION_DELETE };

struct snapshot_args {
    const char *format;
    uint32_t open_flags;      /* VD_OPEN_NO_LOCK with -U, VD_OPEN_SAFE with --safe */
    enum snapshot_action action;
    const char *name;         /* of -c, -a or -d */
    const char *filename;
};

static int list_snapshots(vd_image *img)
{
    struct snapshot_list list;
    int rc = snapshot_list_load(img, &list);
    if (rc < 0)
        cli_lib_error(rc, "%s: Can't get snapshot list", vd_get_filename(img));
    else if (list.count) /* like qemu-img, nothing at all for an image without snapshots */
        snapshot_list_print(&list);
    snapshot_list_free(&list);
    return rc < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * -a and -d: look the snapshot up as qemu-img does (-a by id, else by name;
 * -d by name only), so that an unknown one is reported in qemu-img's words,
 * then act on its id.
 */
static int change_snapshot(vd_image *img, const struct snapshot_args *a)
{
    const bool apply = a->action == ACTION_APPLY;
    const char *verb = apply ? "apply" : "delete";
    struct snapshot_list list;
    int rc = snapshot_list_load(img, &list);
    const vd_snapshot_info *sn = rc < 0  ? NULL
                                 : apply ? snapshot_list_find_id_or_name(&list, a->name)
                                         : snapshot_list_find(&list, NULL, a->name);
    if (sn)
        rc = apply ? vd_snapshot_apply(img, sn->id, 0) : vd_snapshot_delete(img, sn->id, 0);
    snapshot_list_free(&list); /* after the call: sn->id belongs to the list's entry */
    if (rc < 0)
        return cli_lib_error(rc, "Could not %s snapshot '%s'", verb, a->name);
    if (!sn)
        return cli_error("Could not %s snapshot '%s': %s", verb, a->name,
                         apply ? "Failed to load snapshot: No such file or directory"
                               : "snapshot not found");
    return EXIT_SUCCESS;
}

static int run_action(vd_image *img, const struct snapshot_args *a)
{
    int rc;
    switch (a->action) {
    case ACTION_LIST:
        return list_snapshots(img);
    case ACTION_CREATE:
        rc = vd_snapshot_create(img, a->name, 0);
        return rc < 0 ? cli_lib_error(rc, "Could not create snapshot '%s'", a->name)
                      : EXIT_SUCCESS;
    case ACTION_APPLY:
    case ACTION_DELETE:
        return change_snapshot(img, a);
    case ACTION_NONE: /* qemu-img opens the image and does nothing */
        break;
    }
    return EXIT_SUCCESS;
}

static int snapshot(const struct snapshot_args *a)
{
    uint32_t flags = a->open_flags | (a->action == ACTION_LIST ? 0 : VD_OPEN_RDWR);
    vd_image *img = cli_open_image(a->filename, a->format, flags);
    if (!img)
        return EXIT_FAILURE;
    int status = run_action(img, a);
    int rc = vd_close(img);
    if (rc < 0 && status == EXIT_SUCCESS)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    return status;
}

static bool set_action(struct snapshot_args *a, enum snapshot_action action, const char *name)
{
    if (a->action != ACTION_NONE) {
        cli_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
        return false;
    }
    a->action = action;
    a->name = name;
    return true;
}

static int run_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        CLI_OPTION_HELP, CLI_OPTION_FORCE_SHARE, CLI_OPTION_SAFE, { NULL, 0, NULL, 0 },
    };
    struct snapshot_args args = { 0 };
    int opt;
    while ((opt = getopt_long(argc, argv, ":hf:Uqlc:a:d:", long_options, NULL)) != -1) {
        bool ok = true;
        switch (opt) {
        case 'f':
            args.format = optarg;
            break;
        case 'U':
            args.open_flags |= VD_OPEN_NO_LOCK;
            break;
        case CLI_OPT_SAFE:
            args.open_flags |= VD_OPEN_SAFE;
            break;
        case 'q': /* nothing is printed but the list, and -l prints it anyway, as qemu-img */
            break;
        case 'l':
            ok = set_action(&args, ACTION_LIST, NULL);
            break;
        case 'c':
            ok = set_action(&args, ACTION_CREATE, optarg);
            break;
        case 'a':
            ok = set_action(&args, ACTION_APPLY, optarg);
            break;
        case 'd':
            ok = set_action(&args, ACTION_DELETE, optarg);
            break;
        default:
            return cli_option_fallback(&cmd_snapshot, opt, argv);
        }
        if (!ok)
            return EXIT_FAILURE;
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    args.filename = argv[optind];
    return snapshot(&args);
}

const struct cli_command cmd_snapshot = {
    .name = "snapshot",
    .synopsis = "[-f fmt] [-U] [-q] [--safe] [-l | -a snapshot | -c snapshot | -d snapshot] "
                "filename",
    .summary = "list, create, apply or delete internal snapshots",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  -l              list the snapshots (nothing for an image without any)\n"
        "  -c snapshot     create a snapshot of the current state with this name\n"
        "  -a snapshot     revert the image to a snapshot (its id, or else its name)\n"
        "  -d snapshot     delete a snapshot (by name)\n"
        "  -U, --force-share\n"
        "                  open without taking locks (only with -l)\n"
        "  -q              quiet (accepted; -l prints the list anyway)\n"
        CLI_HELP_SAFE
        "  filename        the image; opened read-write except with -l\n",
    .run = run_snapshot,
    .image_opts = true,
};
