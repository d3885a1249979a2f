/*
 * Persistent dirty bitmaps: the public API, write tracking and the bits in
 * memory. The format backend lists, loads and stores them (see bitmap.h).
 *
 * When they are stored: a writable open marks every enabled bitmap in use
 * on disk before the first write (the backend does, at open), so that from
 * then on a crash leaves it inconsistent rather than stale; vd_close stores
 * them all and clears the marks; a flush stores them only when the API
 * changed them (an added, removed, cleared or disabled bitmap is then
 * durable), the enabled ones still marked in use. Storing the enabled ones
 * as valid at a flush would need the mark back on disk before the next
 * write reaches the disk, a synchronous write in front of every first
 * write after a flush; QEMU does not do it either.
 */
#include "core/bitmap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t nwords(uint64_t nbits)
{
    return nbits / 64 + (nbits % 64 != 0);
}

int vd_bitmap_append(vd_image *img, const char *name, size_t name_len, uint32_t gbits,
                     bool enabled, bool inconsistent, uint64_t stored_at)
{
    if (img->nbitmaps == img->bitmaps_room) {
        size_t room = img->bitmaps_room ? 2 * img->bitmaps_room : 8;
        struct vd_bitmap *grown = realloc(img->bitmaps, room * sizeof *grown);
        if (!grown)
            return vd_err(VD_ENOMEM, "%s: out of memory for bitmaps", img->filename);
        img->bitmaps = grown;
        img->bitmaps_room = room;
    }
    char *copy = malloc(name_len + 1);
    if (!copy)
        return vd_err(VD_ENOMEM, "%s: out of memory for bitmaps", img->filename);
    memcpy(copy, name, name_len);
    copy[name_len] = '\0';
    img->bitmaps[img->nbitmaps++] = (struct vd_bitmap){
        .name = copy, .granularity_bits = gbits, .enabled = enabled, .inconsistent = inconsistent,
        .stored_at = stored_at, .nbits = vd_bitmap_nbits(img->size, gbits) };
    return 0;
}

static int load_locked(vd_image *img, struct vd_bitmap *b)
{
    if (b->words)
        return 0;
    if (b->inconsistent)
        return vd_err(VD_ECORRUPT, "%s: bitmap '%s' is inconsistent (in use when the image was "
                      "opened); it can only be removed", img->filename, b->name);
    uint64_t *words = calloc(nwords(b->nbits) ? nwords(b->nbits) : 1, sizeof *words);
    if (!words)
        return vd_err(VD_ENOMEM, "%s: out of memory for bitmap '%s'", img->filename, b->name);
    b->words = words;
    int rc = b->stored_at && img->backend->bitmap_load ? img->backend->bitmap_load(img, b) : 0;
    if (rc < 0) {
        free(b->words);
        b->words = NULL;
    }
    return rc;
}

int vd_bitmap_ensure_loaded(vd_image *img, struct vd_bitmap *b)
{
    pthread_mutex_lock(&img->bitmap_load_lock);
    int rc = load_locked(img, b);
    pthread_mutex_unlock(&img->bitmap_load_lock);
    return rc;
}

bool vd_bitmaps_any_enabled(const vd_image *img)
{
    for (size_t i = 0; i < img->nbitmaps; i++)
        if (img->bitmaps[i].enabled && !img->bitmaps[i].inconsistent)
            return true;
    return false;
}

int vd_bitmaps_load_enabled(vd_image *img)
{
    int rc = 0;
    for (size_t i = 0; i < img->nbitmaps && rc == 0; i++)
        if (img->bitmaps[i].enabled && !img->bitmaps[i].inconsistent)
            rc = vd_bitmap_ensure_loaded(img, &img->bitmaps[i]);
    return rc;
}

/* Set bits [first, end). Atomic per word: parallel writers may set bits of one word. */
static void set_bits(struct vd_bitmap *b, uint64_t first, uint64_t end)
{
    while (first < end) {
        uint64_t w = first / 64, lo = first % 64;
        uint64_t hi = end - w * 64 < 64 ? end - w * 64 : 64;
        uint64_t mask = (hi == 64 ? ~0ull : (1ull << hi) - 1) & ~((1ull << lo) - 1);
        /* rewrites of dirty granules are the common case: leave their cache line shared */
        if ((__atomic_load_n(&b->words[w], __ATOMIC_RELAXED) & mask) != mask)
            __atomic_fetch_or(&b->words[w], mask, __ATOMIC_RELAXED);
        first = (w + 1) * 64;
    }
}

static void mark_range(struct vd_bitmap *b, uint64_t off, uint64_t len)
{
    uint64_t first = off >> b->granularity_bits, end = ((off + len - 1) >> b->granularity_bits) + 1;
    if (end > b->nbits) /* the size changed under the bitmap: what lies past it is not tracked */
        end = b->nbits;
    set_bits(b, first, end);
}

void vd_image_mark_dirty(vd_image *img, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    for (size_t i = 0; i < img->nbitmaps; i++) {
        struct vd_bitmap *b = &img->bitmaps[i];
        if (b->enabled && b->words)
            mark_range(b, off, len);
    }
}

static bool test_bit(const struct vd_bitmap *b, uint64_t i)
{
    return (__atomic_load_n(&b->words[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

/* The first bit at or after from whose value is dirty, or b->nbits; a word at a time. */
static uint64_t next_bit(const struct vd_bitmap *b, uint64_t from, bool dirty)
{
    while (from < b->nbits) {
        uint64_t word = __atomic_load_n(&b->words[from / 64], __ATOMIC_RELAXED);
        if (!dirty)
            word = ~word;
        word &= ~0ull << (from % 64);
        if (word) {
            uint64_t found = from / 64 * 64 + (uint64_t)__builtin_ctzll(word);
            return found < b->nbits ? found : b->nbits;
        }
        from = from / 64 * 64 + 64;
    }
    return b->nbits;
}

void vd_bitmap_get_bytes(const struct vd_bitmap *b, uint64_t start, uint8_t *buf, size_t len)
{
    uint64_t limit = nwords(b->nbits) * 8;
    for (size_t i = 0; i < len; i++) {
        uint64_t k = start + i;
        buf[i] = k < limit ? (uint8_t)(b->words[k / 8] >> (8 * (k % 8))) : 0;
    }
}

void vd_bitmap_set_bytes(struct vd_bitmap *b, uint64_t start, const uint8_t *buf, size_t len)
{
    uint64_t limit = nwords(b->nbits) * 8;
    for (size_t i = 0; i < len && start + i < limit; i++) {
        uint64_t k = start + i, shift = 8 * (k % 8);
        b->words[k / 8] = (b->words[k / 8] & ~(0xffull << shift)) | ((uint64_t)buf[i] << shift);
    }
    if (b->nbits % 64) /* bits past the end: never set, whatever the file says */
        b->words[b->nbits / 64] &= (1ull << (b->nbits % 64)) - 1;
}

void vd_bitmaps_free(vd_image *img)
{
    for (size_t i = 0; i < img->nbitmaps; i++) {
        free(img->bitmaps[i].name);
        free(img->bitmaps[i].words);
    }
    free(img->bitmaps);
    img->bitmaps = NULL;
    img->nbitmaps = img->bitmaps_room = 0;
}

int vd_bitmaps_fit_size(vd_image *img)
{
    for (size_t i = 0; i < img->nbitmaps; i++) {
        struct vd_bitmap *b = &img->bitmaps[i];
        uint64_t nbits = vd_bitmap_nbits(img->size, b->granularity_bits);
        if (nbits == b->nbits)
            continue;
        if (b->words) {
            uint64_t have = nwords(b->nbits), need = nwords(nbits) ? nwords(nbits) : 1;
            uint64_t *words = realloc(b->words, need * sizeof *words);
            if (!words)
                return vd_err(VD_ENOMEM, "%s: out of memory for bitmap '%s'", img->filename,
                              b->name);
            if (need > have)
                memset(words + have, 0, (need - have) * sizeof *words);
            b->words = words;
            if (nbits < b->nbits && nbits % 64) /* shrunk: no bit past the end stays set */
                words[nbits / 64] &= (1ull << (nbits % 64)) - 1;
        }
        b->nbits = nbits;
    }
    return 0;
}

int vd_image_store_bitmaps(vd_image *img)
{
    if (img->read_only || img->poisoned || !img->backend->bitmaps_store ||
        !(img->bitmaps_changed || vd_bitmaps_any_enabled(img)))
        return 0;
    return img->backend->bitmaps_store(img, true);
}

/* ------------------------------------------------------------- public API */

static struct vd_bitmap *find(vd_image *img, const char *call, const char *name, int *rc)
{
    *rc = 0;
    if (!name) {
        *rc = vd_err(VD_EINVAL, "%s: NULL bitmap name", call);
        return NULL;
    }
    for (size_t i = 0; i < img->nbitmaps; i++)
        if (!strcmp(img->bitmaps[i].name, name))
            return &img->bitmaps[i];
    *rc = vd_err(VD_ENOENT, "Dirty bitmap '%s' not found", name);
    return NULL;
}

int vd_bitmap_count(vd_image *img, size_t *count)
{
    int rc = vd_enter(img, "vd_bitmap_count", 0, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!count)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_bitmap_count: NULL count"));
    *count = img->nbitmaps;
    return vd_leave(img, 0);
}

int vd_bitmap_get(vd_image *img, size_t index, vd_bitmap_info *info)
{
    int rc = vd_enter(img, "vd_bitmap_get", 0, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!info || info->struct_size < sizeof *info)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_bitmap_get: NULL info or struct_size too small"));
    if (index >= img->nbitmaps)
        return vd_leave(img, vd_err(VD_ENOENT, "vd_bitmap_get: no bitmap %zu (%zu bitmaps)", index,
                                    img->nbitmaps));
    const struct vd_bitmap *b = &img->bitmaps[index];
    info->name = b->name;
    info->granularity = 1ull << b->granularity_bits;
    info->flags = (b->enabled ? VD_BITMAP_AUTO : 0) |
                  (b->inconsistent ? VD_BITMAP_IN_USE | VD_BITMAP_INCONSISTENT : 0);
    return vd_leave(img, 0);
}

/* Enter for a change of img's bitmaps: a writable handle of a format that stores them. */
static int enter_change(vd_image *img, const char *call, uint32_t flags, uint32_t known)
{
    int rc = vd_enter(img, call, flags, known, VD_ACCESS_WRITE);
    if (rc == 0 && !img->backend->bitmaps_store)
        rc = vd_leave(img, vd_err(VD_EUNSUPPORTED, "%s: format '%s' has no persistent bitmaps",
                                  call, img->backend->name));
    return rc;
}

int vd_bitmaps_can_take(vd_image *img)
{
    if (!img->backend->bitmaps_store)
        return vd_err(VD_EUNSUPPORTED, "Format driver '%s' does not support bitmaps",
                      img->backend->name);
    return img->backend->bitmap_can_add ? img->backend->bitmap_can_add(img) : 0;
}

static int granularity_bits(vd_image *img, uint64_t granularity, uint32_t *gbits)
{
    if (!granularity)
        granularity = img->cluster_size > 4096 ? img->cluster_size : 4096;
    if (granularity & (granularity - 1))
        return vd_err(VD_EINVAL, "Granularity must be power of 2 and at least 512");
    *gbits = (uint32_t)__builtin_ctzll(granularity);
    if (*gbits < VD_BITMAP_MIN_GRANULARITY_BITS || *gbits > VD_BITMAP_MAX_GRANULARITY_BITS)
        return vd_err(VD_EINVAL, "Granularity must be power of 2 and at least 512");
    return 0;
}

int vd_bitmap_add(vd_image *img, const char *name, uint64_t granularity, uint32_t flags)
{
    int rc = enter_change(img, "vd_bitmap_add", flags, VD_BITMAP_ADD_DISABLED);
    if (rc < 0)
        return rc;
    uint32_t gbits = 0;
    size_t len = name ? strlen(name) : 0;
    if (!len)
        rc = vd_err(VD_EINVAL, "vd_bitmap_add: the bitmap name must not be empty");
    else if (len > VD_BITMAP_MAX_NAME)
        rc = vd_err(VD_EINVAL, "Bitmap name is too long: %zu bytes (at most %d)", len,
                    VD_BITMAP_MAX_NAME);
    else if (img->nbitmaps >= VD_BITMAP_MAX_COUNT)
        rc = vd_err(VD_ETOOBIG, "Maximum number of persistent bitmaps is already reached");
    for (size_t i = 0; rc == 0 && i < img->nbitmaps; i++)
        if (!strcmp(img->bitmaps[i].name, name))
            rc = vd_err(VD_EEXIST, "Bitmap already exists: %s", name);
    if (rc == 0 && img->backend->bitmap_can_add)
        rc = img->backend->bitmap_can_add(img);
    if (rc == 0)
        rc = granularity_bits(img, granularity, &gbits);
    if (rc == 0)
        rc = vd_bitmap_append(img, name, len, gbits, !(flags & VD_BITMAP_ADD_DISABLED), false, 0);
    if (rc == 0) {
        rc = vd_bitmap_ensure_loaded(img, &img->bitmaps[img->nbitmaps - 1]);
        if (rc < 0) /* keep no bitmap without bits */
            free(img->bitmaps[--img->nbitmaps].name);
    }
    if (rc == 0)
        img->bitmaps_changed = true;
    return vd_leave(img, rc);
}

int vd_bitmap_remove(vd_image *img, const char *name, uint32_t flags)
{
    int rc = enter_change(img, "vd_bitmap_remove", flags, 0);
    if (rc < 0)
        return rc;
    struct vd_bitmap *b = find(img, "vd_bitmap_remove", name, &rc);
    if (b) {
        free(b->name);
        free(b->words);
        size_t i = (size_t)(b - img->bitmaps);
        memmove(b, b + 1, (img->nbitmaps - i - 1) * sizeof *b);
        img->nbitmaps--;
        img->bitmaps_changed = true;
    }
    return vd_leave(img, rc);
}

/* Find a bitmap to change, loaded (an inconsistent one is refused). */
static struct vd_bitmap *find_loaded(vd_image *img, const char *call, const char *name, int *rc)
{
    struct vd_bitmap *b = find(img, call, name, rc);
    if (b && (*rc = vd_bitmap_ensure_loaded(img, b)) < 0)
        return NULL;
    return b;
}

int vd_bitmap_clear(vd_image *img, const char *name, uint32_t flags)
{
    int rc = enter_change(img, "vd_bitmap_clear", flags, 0);
    if (rc < 0)
        return rc;
    struct vd_bitmap *b = find_loaded(img, "vd_bitmap_clear", name, &rc);
    if (b) {
        memset(b->words, 0, nwords(b->nbits) * sizeof *b->words);
        img->bitmaps_changed = true;
    }
    return vd_leave(img, rc);
}

static int set_enabled(vd_image *img, const char *call, const char *name, uint32_t flags, bool on)
{
    int rc = enter_change(img, call, flags, 0);
    if (rc < 0)
        return rc;
    struct vd_bitmap *b = find_loaded(img, call, name, &rc);
    if (b && b->enabled != on) {
        b->enabled = on;
        img->bitmaps_changed = true;
    }
    return vd_leave(img, rc);
}

int vd_bitmap_enable(vd_image *img, const char *name, uint32_t flags)
{
    return set_enabled(img, "vd_bitmap_enable", name, flags, true);
}

int vd_bitmap_disable(vd_image *img, const char *name, uint32_t flags)
{
    return set_enabled(img, "vd_bitmap_disable", name, flags, false);
}

/* Visit the runs of b over [offset, end): fn(ctx, off, len, dirty) until it returns nonzero. */
static void walk_runs(const struct vd_bitmap *b, uint64_t offset, uint64_t end,
                      vd_bitmap_extent_fn fn, void *ctx)
{
    const uint32_t g = b->granularity_bits;
    while (offset < end) {
        uint64_t bit = offset >> g;
        bool dirty = bit < b->nbits && test_bit(b, bit);
        uint64_t next = bit < b->nbits ? next_bit(b, bit + 1, !dirty) : UINT64_MAX >> g;
        uint64_t run_end = next << g < end ? next << g : end;
        if (fn(ctx, offset, run_end - offset, dirty))
            return;
        offset = run_end;
    }
}

static int check_range(vd_image *img, const char *call, uint64_t offset, uint64_t length)
{
    uint64_t end;
    if (vd_add_overflows(offset, length, &end) || end > img->size)
        return vd_err(VD_ERANGE, "%s: %s: range %llu+%llu is past the end of the image (%llu "
                      "bytes)", call, img->filename, (unsigned long long)offset,
                      (unsigned long long)length, (unsigned long long)img->size);
    return 0;
}

int vd_bitmap_extents(vd_image *img, const char *name, uint64_t offset, uint64_t length,
                      vd_bitmap_extent_fn fn, void *ctx, uint32_t flags)
{
    int rc = vd_enter(img, "vd_bitmap_extents", flags, 0, VD_ACCESS_SHARED);
    if (rc < 0)
        return rc;
    if (!fn)
        return vd_leave(img, vd_err(VD_EINVAL, "vd_bitmap_extents: NULL callback"));
    rc = check_range(img, "vd_bitmap_extents", offset, length);
    struct vd_bitmap *b = rc == 0 ? find_loaded(img, "vd_bitmap_extents", name, &rc) : NULL;
    if (b)
        walk_runs(b, offset, offset + length, fn, ctx);
    return vd_leave(img, rc);
}

struct merge_ctx {
    struct vd_bitmap *dst;
};

static int merge_run(void *ctx, uint64_t offset, uint64_t length, int dirty)
{
    struct merge_ctx *m = ctx;
    if (dirty)
        mark_range(m->dst, offset, length);
    return 0;
}

int vd_bitmap_merge(vd_image *img, const char *name, vd_image *src, const char *src_name,
                    uint32_t flags)
{
    int rc = enter_change(img, "vd_bitmap_merge", flags, 0);
    if (rc < 0)
        return rc;
    struct vd_bitmap *dst = find_loaded(img, "vd_bitmap_merge", name, &rc);
    if (!dst)
        return vd_leave(img, rc);
    /* the source is read under its own lock, unless it is this very handle */
    if (src != img && (rc = vd_enter(src, "vd_bitmap_merge", 0, 0, VD_ACCESS_SHARED)) < 0)
        return vd_leave(img, rc);
    struct vd_bitmap *from = find_loaded(src, "vd_bitmap_merge", src_name, &rc);
    if (from) {
        uint64_t size = src->size < img->size ? src->size : img->size;
        struct merge_ctx m = { dst };
        walk_runs(from, 0, size, merge_run, &m);
        img->bitmaps_changed = true;
    }
    if (src != img)
        vd_leave(src, 0);
    return vd_leave(img, rc);
}
