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
 * Property keys name nested values, level by level between dots: a
 * numeric level is an element of a list ("extents.0.filename": field
 * filename of element 0 of the list extents; "encrypt.slots.0.active").
 * walk_properties() turns the flat, ordered keys into the opening and
 * closing of those lists and objects for a layout (human or JSON).
 */
#define MAX_LEVELS 8

struct key_levels {
    char text[256];           /* the key, its dots turned into NULs */
    size_t at[MAX_LEVELS], n; /* where each level starts in text */
};

static void split_key(const char *key, struct key_levels *k)
{
    snprintf(k->text, sizeof k->text, "%s", key);
    k->n = 0;
    for (size_t i = 0, start = 0;; i++) {
        bool dot = k->text[i] == '.' && k->n < MAX_LEVELS - 1;
        if (dot || !k->text[i]) {
            k->at[k->n++] = start;
            if (!dot)
                return;
            k->text[i] = '\0';
            start = i + 1;
        }
    }
}

static const char *level(const struct key_levels *k, size_t i)
{
    return k->text + k->at[i];
}

static bool is_index(const char *name)
{
    return *name >= '0' && *name <= '9';
}

struct prop_layout {
    /* open a list or an object, named name (an index: an element of the list it is in) */
    void (*open)(void *ctx, const char *name, bool list, size_t depth);
    void (*close)(void *ctx, bool list);
    void (*value)(void *ctx, vd_image *img, const char *name, const char *value, int type,
                  size_t depth);
    void *ctx;
};

static void walk_properties(vd_image *img, const struct prop_layout *l)
{
    struct key_levels open = { .n = 0 }, k;
    bool is_list[MAX_LEVELS];
    const char *key, *value;
    int type;
    for (size_t i = 0; vd_get_property(img, i, &key, &value, &type) == 0; i++) {
        split_key(key, &k);
        size_t containers = k.n - 1, same = 0;
        while (same < open.n && same < containers && !strcmp(level(&open, same), level(&k, same)))
            same++;
        while (open.n > same)
            l->close(l->ctx, is_list[--open.n]);
        for (; open.n < containers; open.n++) {
            is_list[open.n] = is_index(level(&k, open.n + 1));
            l->open(l->ctx, level(&k, open.n), is_list[open.n], open.n);
        }
        l->value(l->ctx, img, level(&k, containers), value, type, containers);
        open = k;
        open.n = containers;
    }
    while (open.n)
        l->close(l->ctx, is_list[--open.n]);
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

static void json_open(void *w, const char *name, bool list, size_t depth)
{
    if (list)
        json_begin_array(w, is_index(name) ? NULL : name);
    else
        json_begin_object(w, is_index(name) ? NULL : name);
}

static void json_close(void *w, bool list)
{
    if (list)
        json_end_array(w);
    else
        json_end_object(w);
}

static void json_value(void *w, vd_image *img, const char *name, const char *value, int type,
                       size_t depth)
{
    json_property(w, is_index(name) ? NULL : name, value, type);
    if (depth == 0 && bitmaps_go_after(img, name))
        json_bitmaps(w, img);
}

static void json_format_specific(struct json_writer *w, const struct image_facts *f)
{
    if (!has_properties(f->img))
        return;
    json_begin_object(w, "format-specific");
    json_string(w, "type", f->info.format);
    json_begin_object(w, "data");
    walk_properties(f->img, &(struct prop_layout){ json_open, json_close, json_value, w });
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

/* A level's name as qemu-img shows it, indented by its depth: "[0]" for an element. */
static void print_name(const char *name, size_t depth)
{
    printf("%*s", (int)(4 * (depth + 1)), "");
    if (is_index(name))
        printf("[%s]", name);
    else
        print_key(name, strlen(name));
}

static void human_open(void *ctx, const char *name, bool list, size_t depth)
{
    print_name(name, depth);
    printf(":\n");
}

static void human_close(void *ctx, bool list)
{
}

static void human_value(void *ctx, vd_image *img, const char *name, const char *value, int type,
                        size_t depth)
{
    print_name(name, depth);
    printf(": %s\n", value);
    if (depth == 0 && bitmaps_go_after(img, name))
        print_human_bitmaps(img);
}

/* Nested values ("extents.0.filename") as qemu-img shows them: "extents:", "[0]:", then the fields. */
static void print_human_properties(vd_image *img)
{
    if (!has_properties(img))
        return;
    printf("Format specific information:\n");
    walk_properties(img, &(struct prop_layout){ human_open, human_close, human_value, NULL });
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
