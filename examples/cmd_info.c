/* vdisk info [-f fmt] [--output=human|json] [-U] filename */
#include "cli.h"
#include "json.h"
#include "size.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything both layouts show, gathered once. */
struct image_facts {
    vd_image *img;
    vd_info info;
    char *full_backing; /* the backing file's resolved path, or NULL */
};

static bool has_properties(vd_image *img)
{
    const char *key, *value;
    return vd_get_property(img, 0, &key, &value, NULL) == 0;
}

static void json_format_specific(struct json_writer *w, const struct image_facts *f)
{
    if (!has_properties(f->img))
        return;
    json_begin_object(w, "format-specific");
    json_string(w, "type", f->info.format);
    json_begin_object(w, "data");
    const char *key, *value;
    int type;
    for (size_t i = 0; vd_get_property(f->img, i, &key, &value, &type) == 0; i++) {
        if (type == VD_PROP_STRING)
            json_string(w, key, value);
        else /* VD_PROP_INT and VD_PROP_BOOL values are JSON literals already */
            json_raw(w, key, value);
    }
    json_end_object(w);
    json_end_object(w);
}

/* The members in the order qemu-img 7.2 prints them. */
static void print_json(const struct image_facts *f)
{
    const vd_info *info = &f->info;
    struct json_writer w;
    json_init(&w, stdout, JSON_PRETTY);
    json_begin_object(&w, NULL);
    if (info->backing_file && info->backing_format)
        json_string(&w, "backing-filename-format", info->backing_format);
    json_uint(&w, "virtual-size", info->virtual_size);
    json_string(&w, "filename", info->filename);
    if (info->cluster_size)
        json_uint(&w, "cluster-size", info->cluster_size);
    json_string(&w, "format", info->format);
    json_uint(&w, "actual-size", info->actual_size);
    json_format_specific(&w, f);
    if (f->full_backing)
        json_string(&w, "full-backing-filename", f->full_backing);
    if (info->encrypted)
        json_bool(&w, "encrypted", true);
    if (info->backing_file)
        json_string(&w, "backing-filename", info->backing_file);
    json_bool(&w, "dirty-flag", info->dirty != 0);
    json_end_object(&w);
}

/* "compression-type" is shown as "compression type: zlib", as qemu-img does. */
static void print_human_properties(vd_image *img)
{
    if (!has_properties(img))
        return;
    printf("Format specific information:\n");
    const char *key, *value;
    for (size_t i = 0; vd_get_property(img, i, &key, &value, NULL) == 0; i++) {
        printf("    ");
        for (const char *k = key; *k; k++)
            putchar(*k == '-' ? ' ' : *k);
        printf(": %s\n", value);
    }
}

static void print_human(const struct image_facts *f)
{
    const vd_info *info = &f->info;
    char virtual_text[SIZE_TEXT_MAX], actual_text[SIZE_TEXT_MAX];
    size_to_text(info->virtual_size, virtual_text);
    size_to_text(info->actual_size, actual_text);
    printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64 " bytes)\ndisk size: %s\n",
           info->filename, info->format, virtual_text, info->virtual_size, actual_text);
    if (info->encrypted)
        printf("encrypted: yes\n");
    if (info->cluster_size)
        printf("cluster_size: %" PRIu32 "\n", info->cluster_size);
    if (info->dirty)
        printf("cleanly shut down: no\n");
    if (info->backing_file) {
        printf("backing file: %s", info->backing_file);
        if (strcmp(info->backing_file, f->full_backing) != 0)
            printf(" (actual path: %s)", f->full_backing);
        putchar('\n');
        if (info->backing_format)
            printf("backing file format: %s\n", info->backing_format);
    }
    print_human_properties(f->img);
}

static int show_info(const struct image_args *a)
{
    /* like qemu-img info: only this image, so a missing backing file is no error */
    struct image_facts f = { .info = VD_INFO_INIT };
    f.img = cli_open_image(a->filename, a->format, a->open_flags | VD_OPEN_NO_BACKING);
    if (!f.img)
        return EXIT_FAILURE;
    int status = EXIT_SUCCESS;
    int rc = vd_get_info(f.img, &f.info);
    if (rc < 0)
        status = cli_lib_error(rc, "%s", a->filename);
    else if (f.info.backing_file &&
             !(f.full_backing = cli_resolve_backing(f.info.filename, f.info.backing_file)))
        status = cli_error("out of memory");
    else if (a->output == OUTPUT_JSON)
        print_json(&f);
    else
        print_human(&f);
    free(f.full_backing);
    vd_close(f.img);
    return status;
}

static int run_info(int argc, char **argv)
{
    struct image_args args;
    int status;
    return cli_parse_image_args(&cmd_info, argc, argv, &args, &status) ? show_info(&args)
                                                                        : status;
}

const struct cli_command cmd_info = {
    .name = "info",
    .synopsis = "[-f fmt] [--output=ofmt] [-U] filename",
    .summary = "show information about a disk image",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  --output=ofmt   'human' (default) or 'json' (the keys of qemu-img info)\n"
        "  -U, --force-share\n"
        "                  open without taking locks (inspect an image in use)\n"
        "  filename        the image to describe\n",
    .run = run_info,
};
