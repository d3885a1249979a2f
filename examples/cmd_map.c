/* vdisk map [-f fmt] [--start-offset=N] [--max-length=N] [--output=human|json] [-U] [--safe]
 *           filename */
#include "cli.h"
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* One run of the map, as qemu-img's MapEntry. */
struct map_entry {
    uint64_t start, length;
    uint64_t offset; /* host offset, when has_offset */
    int32_t depth;
    bool present, zero, data, has_offset;
};

struct map_output {
    enum output_format format;
    struct json_writer json;
    vd_image *top;
};

/*
 * The name of the file holding the data of the image at the given depth of
 * the chain below top (its external data file, if it has one); "" if there
 * is no such image.
 */
static const char *chain_file(vd_image *top, int32_t depth)
{
    vd_image *img = top;
    for (int32_t i = 0; img && i < depth; i++)
        img = vd_get_backing(img);
    if (!img)
        return "";
    vd_info info = VD_INFO_INIT;
    return vd_get_info(img, &info) == 0 && info.data_file ? info.data_file : vd_get_filename(img);
}

static struct map_entry entry_from_extent(const vd_extent *ext)
{
    return (struct map_entry){
        .start = ext->offset,
        .length = ext->length,
        .offset = ext->host_offset,
        .depth = ext->depth,
        .present = (ext->flags & VD_EXTENT_ALLOCATED) != 0,
        .zero = (ext->flags & VD_EXTENT_ZERO) != 0,
        .data = (ext->flags & VD_EXTENT_DATA) != 0,
        .has_offset = ext->host_offset != VD_NO_HOST_OFFSET,
    };
}

/* qemu-img's entry_mergeable(); equal depths mean the same file. */
static bool entries_mergeable(const struct map_entry *curr, const struct map_entry *next)
{
    if (curr->length == 0)
        return false;
    if (curr->zero != next->zero || curr->data != next->data || curr->depth != next->depth ||
        curr->present != next->present || curr->has_offset != next->has_offset)
        return false;
    return !curr->has_offset || curr->offset + curr->length == next->offset;
}

static bool print_human_entry(struct map_output *out, const struct map_entry *e,
                              struct map_entry *next)
{
    if (e->data && !e->has_offset) {
        cli_error("File contains external, encrypted or compressed clusters.");
        return false;
    }
    if (e->data && !e->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->offset, chain_file(out->top, e->depth));
    /* this layout does not tell holes from zeroes: let them coalesce (as qemu-img) */
    if (next && (!next->data || next->zero)) {
        next->data = false;
        next->zero = true;
    }
    return true;
}

static void print_json_entry(struct map_output *out, const struct map_entry *e)
{
    struct json_writer *w = &out->json;
    json_begin_object(w, NULL);
    json_uint(w, "start", e->start);
    json_uint(w, "length", e->length);
    json_int(w, "depth", e->depth);
    json_bool(w, "present", e->present);
    json_bool(w, "zero", e->zero);
    json_bool(w, "data", e->data);
    if (e->has_offset)
        json_uint(w, "offset", e->offset);
    json_end_object(w);
}

/* Print one merged run; next (NULL after the last) may be adjusted for merging. */
static bool print_entry(struct map_output *out, const struct map_entry *e, struct map_entry *next)
{
    if (out->format == OUTPUT_HUMAN)
        return print_human_entry(out, e, next);
    print_json_entry(out, e);
    return true;
}

/*
 * Walk [start, start + max_length) of the image (as far as it goes), merging
 * adjacent extents with the same attributes.
 */
static int map_image(vd_image *img, uint64_t start, uint64_t max_length, struct map_output *out)
{
    uint64_t size;
    int rc = vd_get_size(img, &size);
    if (rc < 0)
        return cli_lib_error(rc, "%s", vd_get_filename(img));
    if (max_length < size && start < size - max_length)
        size = start + max_length;
    if (out->format == OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    else
        json_begin_array(&out->json, NULL);

    struct map_entry curr = { .start = start };
    while (curr.start + curr.length < size) {
        uint64_t offset = curr.start + curr.length;
        vd_extent ext;
        rc = vd_block_status(img, offset, size - offset, &ext, 0);
        if (rc < 0)
            return cli_lib_error(rc, "Could not read file metadata");
        struct map_entry next = entry_from_extent(&ext);
        if (entries_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && !print_entry(out, &curr, &next))
            return EXIT_FAILURE;
        curr = next;
    }
    if (!print_entry(out, &curr, NULL))
        return EXIT_FAILURE;
    if (out->format == OUTPUT_JSON)
        json_end_array(&out->json);
    return EXIT_SUCCESS;
}

static int show_map(const struct image_args *a)
{
    vd_image *img = cli_open_image(a->filename, a->format, a->open_flags);
    if (!img)
        return EXIT_FAILURE;
    struct map_output out = { .format = a->output, .top = img };
    json_init(&out.json, stdout, JSON_LINES);
    int status = map_image(img, a->start_offset, a->max_length, &out);
    vd_close(img);
    return status;
}

static int run_map(int argc, char **argv)
{
    struct image_args args;
    int status;
    return cli_parse_image_args(&cmd_map, IMAGE_ARGS_RANGE, argc, argv, &args, &status)
               ? show_map(&args)
               : status;
}

const struct cli_command cmd_map = {
    .name = "map",
    .synopsis = "[-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] "
                "[--safe] filename",
    .summary = "show where the data of a disk image is stored",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  --start-offset=offset\n"
        "                  map from this guest offset on (default 0)\n"
        "  --max-length=len\n"
        "                  map at most this many bytes (default: to the end)\n"
        "  --output=ofmt   'human' (default): the data runs with their offset in the\n"
        "                  file holding them; 'json': every run with its attributes\n"
        "                  (start, length, depth, present, zero, data, offset)\n"
        "  -U, --force-share\n"
        "                  open without taking locks (inspect an image in use)\n"
        CLI_HELP_SAFE
        "  filename        the image to map\n",
    .run = run_map,
    .image_opts = true,
};
