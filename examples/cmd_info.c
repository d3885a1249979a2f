/* vdisk info [-f fmt] [--output=human|json] [--backing-chain] [-U] [--safe] filename */
#include "cli.h"
#include "json.h"
#include "size.h"
#include "snapshots.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Everything both layouts show, gathered once. */
struct image_facts {
    vd_image *img;
    vd_info info;
    char *full_backing; /* the backing file's resolved path, or NULL */
    struct snapshot_list snapshots;
};

static bool has_properties(vd_image *img)
{
    const char *key, *value;
    return vd_get_property(img, 0, &key, &value, NULL) == 0;
}

/*
 * A property "list.N.field" is field of element N of the list "list"
 * (VMDK's extents): split it, or return false for a plain property.
 */
static bool list_member(const char *key, size_t *list_len, unsigned long *index, const char **field)
{
    const char *dot = strchr(key, '.');
    char *end;
    if (!dot || dot[1] < '0' || dot[1] > '9')
        return false;
    *index = strtoul(dot + 1, &end, 10);
    if (*end != '.')
        return false;
    *list_len = (size_t)(dot - key);
    *field = end + 1;
    return true;
}

static void json_property(struct json_writer *w, const char *key, const char *value, int type)
{
    if (type == VD_PROP_STRING)
        json_string(w, key, value);
    else /* VD_PROP_INT and VD_PROP_BOOL values are JSON literals already */
        json_raw(w, key, value);
}

/* qemu-img's flag names, in its order. */
static size_t bitmap_flag_names(const vd_bitmap_info *b, const char *names[2])
{
    size_t n = 0;
    if (b->flags & VD_BITMAP_IN_USE)
        names[n++] = "in-use";
    if (b->flags & VD_BITMAP_AUTO)
        names[n++] = "auto";
    return n;
}

/* The persistent bitmaps, where qemu-img lists them: after "lazy-refcounts". */
static bool bitmaps_go_after(vd_image *img, const char *key)
{
    size_t count = 0;
    return !strcmp(key, "lazy-refcounts") && vd_bitmap_count(img, &count) == 0 && count;
}

static void json_bitmaps(struct json_writer *w, vd_image *img)
{
    json_begin_array(w, "bitmaps");
    vd_bitmap_info b = VD_BITMAP_INFO_INIT;
    for (size_t i = 0; vd_bitmap_get(img, i, &b) == 0; i++) {
        const char *names[2];
        size_t n = bitmap_flag_names(&b, names);
        json_begin_object(w, NULL);
        json_begin_array(w, "flags");
        for (size_t k = 0; k < n; k++)
            json_string(w, NULL, names[k]);
        json_end_array(w);
        json_string(w, "name", b.name);
        json_uint(w, "granularity", b.granularity);
        json_end_object(w);
    }
    json_end_array(w);
}

static void print_human_bitmaps(vd_image *img)
{
    printf("    bitmaps:\n");
    vd_bitmap_info b = VD_BITMAP_INFO_INIT;
    for (size_t i = 0; vd_bitmap_get(img, i, &b) == 0; i++) {
        const char *names[2];
        size_t n = bitmap_flag_names(&b, names);
        printf("        [%zu]:\n            flags:\n", i);
        for (size_t k = 0; k < n; k++)
            printf("                [%zu]: %s\n", k, names[k]);
        printf("            name: %s\n            granularity: %" PRIu64 "\n", b.name, b.granularity);
    }
}

static void json_format_specific(struct json_writer *w, const struct image_facts *f)
{
    if (!has_properties(f->img))
        return;
    json_begin_object(w, "format-specific");
    json_string(w, "type", f->info.format);
    json_begin_object(w, "data");
    const char *key, *value, *field;
    int type;
    char list[64] = "";
    unsigned long element = 0, index;
    size_t list_len;
    for (size_t i = 0; vd_get_property(f->img, i, &key, &value, &type) == 0; i++) {
        bool member = list_member(key, &list_len, &index, &field) && list_len < sizeof list;
        bool same_list = member && *list && strlen(list) == list_len &&
                         strncmp(key, list, list_len) == 0;
        if (*list && (!same_list || index != element))
            json_end_object(w);
        if (*list && !same_list) {
            json_end_array(w);
            *list = 0;
        }
        if (!member) {
            json_property(w, key, value, type);
            if (bitmaps_go_after(f->img, key))
                json_bitmaps(w, f->img);
            continue;
        }
        if (!*list) {
            snprintf(list, sizeof list, "%.*s", (int)list_len, key);
            json_begin_array(w, list);
        }
        if (!same_list || index != element)
            json_begin_object(w, NULL);
        element = index;
        json_property(w, field, value, type);
    }
    if (*list) {
        json_end_object(w);
        json_end_array(w);
    }
    json_end_object(w);
    json_end_object(w);
}

/* The members in the order qemu-img 7.2 prints them. */
static void print_json(struct json_writer *w, const struct image_facts *f)
{
    const vd_info *info = &f->info;
    json_begin_object(w, NULL);
    if (info->backing_file && info->backing_format)
        json_string(w, "backing-filename-format", info->backing_format);
    if (f->snapshots.count)
        snapshot_list_json(w, &f->snapshots);
    json_uint(w, "virtual-size", info->virtual_size);
    json_string(w, "filename", info->filename);
    if (info->cluster_size)
        json_uint(w, "cluster-size", info->cluster_size);
    json_string(w, "format", info->format);
    json_uint(w, "actual-size", info->actual_size);
    json_format_specific(w, f);
    if (f->full_backing)
        json_string(w, "full-backing-filename", f->full_backing);
    if (info->encrypted)
        json_bool(w, "encrypted", true);
    if (info->backing_file)
        json_string(w, "backing-filename", info->backing_file);
    json_bool(w, "dirty-flag", info->dirty != 0);
    json_end_object(w);
}

/* A key as qemu-img shows it: "compression-type" as "compression type". */
static void print_key(const char *key, size_t len)
{
    for (size_t i = 0; i < len; i++)
        putchar(key[i] == '-' ? ' ' : key[i]);
}

/* Lists ("extents.0.filename") as qemu-img shows them: "extents:", "[0]:", then the fields. */
static void print_human_properties(vd_image *img)
{
    if (!has_properties(img))
        return;
    printf("Format specific information:\n");
    const char *key, *value, *field, *list = NULL;
    size_t list_len, shown_len = 0;
    unsigned long index, element = 0;
    for (size_t i = 0; vd_get_property(img, i, &key, &value, NULL) == 0; i++) {
        if (!list_member(key, &list_len, &index, &field)) {
            list = NULL;
            printf("    ");
            print_key(key, strlen(key));
            printf(": %s\n", value);
            if (bitmaps_go_after(img, key))
                print_human_bitmaps(img);
            continue;
        }
        bool same_list = list && shown_len == list_len && strncmp(list, key, list_len) == 0;
        if (!same_list) {
            printf("    ");
            print_key(key, list_len);
            printf(":\n");
            list = key;
            shown_len = list_len;
        }
        if (!same_list || index != element)
            printf("        [%lu]:\n", index);
        element = index;
        printf("            ");
        print_key(field, strlen(field));
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
    if (f->snapshots.count)
        snapshot_list_print(&f->snapshots);
    print_human_properties(f->img);
}

/* Gather what an image shows; false (the error reported) if that fails. */
static bool gather_facts(vd_image *img, struct image_facts *f)
{
    *f = (struct image_facts){ .img = img, .info = VD_INFO_INIT };
    int rc = vd_get_info(img, &f->info);
    if (rc < 0) {
        cli_lib_error(rc, "%s", vd_get_filename(img));
        return false;
    }
    if (f->info.backing_file &&
        !(f->full_backing = cli_resolve_backing(f->info.filename, f->info.backing_file))) {
        cli_error("out of memory");
        return false;
    }
    if ((rc = snapshot_list_load(img, &f->snapshots)) < 0) {
        cli_lib_error(rc, "%s: Can't get snapshot list", f->info.filename);
        return false;
    }
    return true;
}

/* The images to describe: top, and with --backing-chain everything below it. */
static size_t chain_length(vd_image *top, bool backing_chain)
{
    size_t n = 1;
    for (vd_image *img = top; backing_chain && (img = vd_get_backing(img));)
        n++;
    return n;
}

/* Everything is gathered before anything is printed: a failure prints no partial output. */
static void print_images(const struct image_facts *facts, size_t count, const struct image_args *a)
{
    struct json_writer w;
    json_init(&w, stdout, JSON_PRETTY);
    if (a->output == OUTPUT_JSON && a->backing_chain)
        json_begin_array(&w, NULL);
    for (size_t i = 0; i < count; i++) {
        if (a->output == OUTPUT_JSON) {
            print_json(&w, &facts[i]);
        } else {
            if (i > 0)
                putchar('\n'); /* a blank line between the images */
            print_human(&facts[i]);
        }
    }
    if (a->output == OUTPUT_JSON && a->backing_chain)
        json_end_array(&w);
}

static int show_info(const struct image_args *a)
{
    /* like qemu-img info: only this image unless asked for the chain, so a missing
       backing file is no error then */
    uint32_t flags = a->open_flags | (a->backing_chain ? 0 : VD_OPEN_NO_BACKING);
    vd_image *top = cli_open_image(a->filename, a->format, flags);
    if (!top)
        return EXIT_FAILURE;
    size_t count = chain_length(top, a->backing_chain), gathered = 0;
    struct image_facts *facts = calloc(count, sizeof *facts);
    int status = facts ? EXIT_SUCCESS : cli_error("out of memory");
    for (vd_image *img = top; status == EXIT_SUCCESS && gathered < count;
         img = vd_get_backing(img))
        if (!gather_facts(img, &facts[gathered++]))
            status = EXIT_FAILURE;
    if (status == EXIT_SUCCESS)
        print_images(facts, count, a);
    for (size_t i = 0; i < gathered; i++) {
        free(facts[i].full_backing);
        snapshot_list_free(&facts[i].snapshots);
    }
    free(facts);
    vd_close(top);
    return status;
}

static int run_info(int argc, char **argv)
{
    struct image_args args;
    int status;
    return cli_parse_image_args(&cmd_info, IMAGE_ARGS_BACKING_CHAIN, argc, argv, &args, &status)
               ? show_info(&args)
               : status;
}

const struct cli_command cmd_info = {
    .name = "info",
    .synopsis = "[-f fmt] [--output=ofmt] [--backing-chain] [-U] [--safe] filename",
    .summary = "show information about a disk image",
    .options =
        "  -f fmt          image format (default: probe the file)\n"
        "  --output=ofmt   'human' (default) or 'json' (the keys of qemu-img info)\n"
        "  --backing-chain also describe every image of the backing chain, top first\n"
        "                  (human: separated by blank lines; json: a list)\n"
        "  -U, --force-share\n"
        "                  open without taking locks (inspect an image in use)\n"
        CLI_HELP_SAFE
        "  filename        the image to describe\n",
    .run = run_info,
    .image_opts = true,
};
