/* vdisk check [-f fmt] [-r leaks|all] [--output=human|json] [-T src_cache] [-U] [-q] [--safe]
 *             filename */
#include "cli.h"
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* qemu-img check's exit codes beyond 0 and 1 */
#define EXIT_CORRUPTIONS 2   /* errors remain in the image */
#define EXIT_LEAKS 3         /* only leaked clusters remain */
#define EXIT_NO_CHECKS 63    /* the format has no check */

/* Each problem found or repaired goes to stderr, as qemu's drivers print them. */
static void print_problem(void *ctx, const char *message)
{
    (void)ctx;
    fprintf(stderr, "%s\n", message);
}

/* qemu-img's dump_human_image_check(). */
static void print_human(const vd_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors)
        printf("No errors were found on the image.\n");
    if (r->corruptions)
        printf("\n%" PRIu64 " errors were found on the image.\nData may be corrupted, or "
               "further writes to the image may corrupt it.\n", r->corruptions);
    if (r->leaks)
        printf("\n%" PRIu64 " leaked clusters were found on the image.\nThis means waste of "
               "disk space, but no harm to data.\n", r->leaks);
    if (r->check_errors)
        printf("\n%" PRIu64 " internal errors have occurred during the check.\n",
               r->check_errors);
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
               "compressed clusters\n", r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* qemu omits the optional members that are zero. */
static void json_count(struct json_writer *w, const char *key, uint64_t count)
{
    if (count)
        json_uint(w, key, count);
}

/* The members in the order qemu-img 7.2 prints them (its dictionary's hash order). */
static void print_json(const vd_check_result *r, const char *filename, const char *format)
{
    struct json_writer w;
    json_init(&w, stdout, JSON_PRETTY);
    json_begin_object(&w, NULL);
    json_count(&w, "image-end-offset", r->image_end_offset);
    json_count(&w, "compressed-clusters", r->compressed_clusters);
    json_count(&w, "total-clusters", r->total_clusters);
    json_count(&w, "corruptions", r->corruptions);
    json_count(&w, "corruptions-fixed", r->corruptions_fixed);
    json_uint(&w, "check-errors", r->check_errors);
    json_count(&w, "leaks", r->leaks);
    json_count(&w, "leaks-fixed", r->leaks_fixed);
    json_count(&w, "allocated-clusters", r->allocated_clusters);
    json_string(&w, "filename", filename);
    json_string(&w, "format", format);
    json_count(&w, "fragmented-clusters", r->fragmented_clusters);
    json_end_object(&w);
}

static void print_result(const vd_check_result *r, const struct image_args *a,
                         const char *format)
{
    if (a->output == OUTPUT_JSON) {
        print_json(r, a->filename, format);
        return;
    }
    /* the library has checked the repaired image again: r holds that second look */
    if (r->leaks_fixed || r->corruptions_fixed)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
               "Double checking the fixed image now...\n",
               r->leaks_fixed, r->corruptions_fixed);
    print_human(r);
}

static int exit_status(const vd_check_result *r)
{
    if (r->check_errors)
        return cli_error("Check failed");
    return r->corruptions ? EXIT_CORRUPTIONS : r->leaks ? EXIT_LEAKS : EXIT_SUCCESS;
}

static int check_image(const struct image_args *a)
{
    uint32_t flags = a->open_flags;
    if (a->check_flags) /* a repair may open a corrupt-marked image */
        flags |= VD_OPEN_RDWR | VD_OPEN_REPAIR;
    vd_image *img = cli_open_image(a->filename, a->format, flags);
    if (!img)
        return EXIT_FAILURE;
    vd_check_result result = VD_CHECK_RESULT_INIT;
    /* A hostile image can name millions of problems: one write(2) per line
     * cost seconds, so the problems go out in blocks and in full before
     * anything else is said. */
    static char problem_buffer[1 << 16];
    setvbuf(stderr, problem_buffer, _IOFBF, sizeof problem_buffer);
    int rc = vd_check(img, a->check_flags, &result, print_problem, NULL);
    fflush(stderr);
    setvbuf(stderr, NULL, _IONBF, 0);
    int status;
    if (rc == VD_EUNSUPPORTED) {
        cli_error("This image format does not support checks");
        /* qemu-img's line; a format that checks but cannot repair (vmdk) also says so */
        if (a->check_flags && !strstr(vd_errmsg(), "does not support checks"))
            cli_error("%s", vd_errmsg());
        status = EXIT_NO_CHECKS;
    } else if (rc < 0) {
        status = cli_lib_error(rc, "Check failed");
    } else {
        if (!a->quiet)
            print_result(&result, a, vd_get_format(img));
        status = exit_status(&result);
    }
    rc = vd_close(img); /* writes out the repairs */
    if (rc < 0)
        status = cli_lib_error(rc, "error while writing '%s'", a->filename);
    return status;
}

static int run_check(int argc, char **argv)
{
    struct image_args args;
    int status;
    return cli_parse_image_args(&cmd_check, IMAGE_ARGS_CHECK, argc, argv, &args, &status)
               ? check_image(&args)
               : status;
}

const struct cli_command cmd_check = {
    .name = "check",
    .synopsis = "[-q] [-f fmt] [--output=ofmt] [-r leaks|all] [-T src_cache] [-U] [--safe] "
                "filename",
    .summary = "check a disk image for consistency, and repair it",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  --output=ofmt   'human' (default) or 'json' (the keys of qemu-img check)\n"
        "  -r leaks|all    repair: 'leaks' frees leaked clusters, 'all' also fixes\n"
        "                  errors (opens the image read-write, even one marked corrupt)\n"
        "  -T src_cache    cache mode: none and directsync read with O_DIRECT\n"
        "  -U, --force-share\n"
        "                  open without taking locks (not with -r)\n"
        CLI_HELP_SAFE
        "  -q              quiet: print only the problems found, on standard error\n"
        "  filename        the image to check\n"
        "\n"
        "Exit status: 0 no problems, 1 the check failed, 2 errors remain, 3 only\n"
        "leaked clusters remain, 63 the format does not support checks.\n",
    .run = run_check,
    .image_opts = true,
};
