/*
 * The metadata table cache: a hash of host offsets finds a table, and CLOCK
 * (second chance) picks the table to evict: every use marks its entry, the
 * hand sweeps the slots clearing marks and evicts the first unpinned entry
 * not marked since its last pass. A miss thus costs O(1) amortised, however
 * many tables the cache holds (scanning every slot for the least recently
 * used one made a check of a 512-byte-cluster image, 65536 tables, spend
 * most of its time here). Free slots wait on a stack.
 */
#include "cow/cache.h"

#include <stdlib.h>
#include <string.h>

#define NO_ENTRY SIZE_MAX

struct entry {
    uint64_t off;       /* host offset; valid only when used */
    size_t next;        /* hash chain */
    unsigned pins;
    bool used, dirty;
    bool referenced;    /* used since the clock hand last passed */
    bool loading;       /* being read from the file (without the lock) */
};

struct vd_cache {
    vd_file *file;
    size_t table_size, capacity, nbuckets;
    uint8_t *tables;    /* capacity * table_size bytes */
    struct entry *entries;
    size_t *buckets;
    size_t *free_slots; /* a stack of the unused slots */
    size_t nfree;
    size_t npinned;     /* entries with pins */
    size_t hand;        /* the clock hand: the next slot it looks at */
    size_t ndirty;
    size_t nloading;
    vd_cache_hook before_write;
    void *hook_ctx;
    pthread_mutex_t lock;
    pthread_cond_t loaded; /* an entry stopped loading */
};

static size_t bucket_of(const struct vd_cache *c, uint64_t off)
{
    return (size_t)((off * 0x9E3779B97F4A7C15ull) >> 32) & (c->nbuckets - 1);
}

static void *table_of(const struct vd_cache *c, size_t i)
{
    return c->tables + i * c->table_size;
}

static size_t index_of(const struct vd_cache *c, const void *table)
{
    return (size_t)((const uint8_t *)table - c->tables) / c->table_size;
}

int vd_cache_new(struct vd_cache **out, vd_file *file, size_t table_size, size_t capacity)
{
    if (capacity < 4)
        capacity = 4; /* enough pins for any single operation */
    struct vd_cache *c = calloc(1, sizeof *c);
    if (!c)
        return vd_err(VD_ENOMEM, "%s: out of memory for the metadata cache", file->path);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->loaded, NULL);
    c->file = file;
    c->table_size = table_size;
    c->capacity = capacity;
    for (c->nbuckets = 8; c->nbuckets < capacity * 2; c->nbuckets *= 2)
        ;
    c->entries = calloc(capacity, sizeof *c->entries);
    c->buckets = malloc(c->nbuckets * sizeof *c->buckets);
    c->free_slots = malloc(capacity * sizeof *c->free_slots);
    c->tables = vd_io_buf_alloc(capacity * table_size);
    if (!c->entries || !c->buckets || !c->free_slots || !c->tables) {
        vd_cache_free(c);
        return vd_err(VD_ENOMEM, "%s: out of memory for the metadata cache (%zu tables)",
                      file->path, capacity);
    }
    for (size_t i = 0; i < c->nbuckets; i++)
        c->buckets[i] = NO_ENTRY;
    for (size_t i = 0; i < capacity; i++) /* slot 0 on top */
        c->free_slots[c->nfree++] = capacity - 1 - i;
    *out = c;
    return 0;
}

void vd_cache_free(struct vd_cache *c)
{
    if (!c)
        return;
    pthread_cond_destroy(&c->loaded);
    pthread_mutex_destroy(&c->lock);
    free(c->entries);
    free(c->buckets);
    free(c->free_slots);
    free(c->tables);
    free(c);
}

void vd_cache_set_before_write(struct vd_cache *c, vd_cache_hook hook, void *ctx)
{
    c->before_write = hook;
    c->hook_ctx = ctx;
}

static size_t find(const struct vd_cache *c, uint64_t off)
{
    for (size_t i = c->buckets[bucket_of(c, off)]; i != NO_ENTRY; i = c->entries[i].next)
        if (c->entries[i].off == off)
            return i;
    return NO_ENTRY;
}

/* Drop entry i from the hash and put its slot on the free stack. */
static void unlink_entry(struct vd_cache *c, size_t i)
{
    size_t *link = &c->buckets[bucket_of(c, c->entries[i].off)];
    while (*link != i)
        link = &c->entries[*link].next;
    *link = c->entries[i].next;
    c->entries[i].used = false;
    c->free_slots[c->nfree++] = i;
}

static void pin(struct vd_cache *c, struct entry *e)
{
    if (e->pins++ == 0)
        c->npinned++;
}

static void unpin(struct vd_cache *c, struct entry *e)
{
    if (--e->pins == 0)
        c->npinned--;
}

/* Whether a slot can be taken: one is free, or some entry is not pinned. Lock held. */
static bool slot_available(const struct vd_cache *c)
{
    return c->npinned < c->capacity;
}

static int run_hook(struct vd_cache *c)
{
    return c->before_write ? c->before_write(c->hook_ctx) : 0;
}

/* Write one dirty entry (the before-write hook has run). Lock held. */
static int write_entry(struct vd_cache *c, size_t i)
{
    int rc = vd_file_pwrite(c->file, table_of(c, i), c->table_size, c->entries[i].off);
    if (rc == 0) {
        c->entries[i].dirty = false;
        c->ndirty--;
    }
    return rc;
}

/*
 * The entry to evict when no slot is free: the first unpinned one the hand
 * finds unmarked, clearing the marks it passes. Within two sweeps, since one
 * entry at least is unpinned (slot_available). Lock held.
 */
static size_t clock_victim(struct vd_cache *c)
{
    for (;;) {
        struct entry *e = &c->entries[c->hand];
        size_t i = c->hand;
        c->hand = (c->hand + 1) % c->capacity;
        if (e->pins)
            continue;
        if (!e->referenced)
            return i;
        e->referenced = false;
    }
}

/* A free slot, evicting (and first writing) an unpinned table if need be. Lock held. */
static int take_slot(struct vd_cache *c, size_t *slot)
{
    if (!c->nfree) {
        if (!slot_available(c))
            return vd_err(VD_EBUSY, "%s: metadata cache exhausted (all %zu tables in use)",
                          c->file->path, c->capacity);
        size_t victim = clock_victim(c);
        if (c->entries[victim].dirty) {
            int rc = run_hook(c);
            if (rc == 0)
                rc = write_entry(c, victim);
            if (rc < 0)
                return rc;
        }
        unlink_entry(c, victim); /* onto the free stack */
    }
    *slot = c->free_slots[--c->nfree];
    return 0;
}

/*
 * The entry of off once nobody is loading it; or else NO_ENTRY, once a slot
 * can be taken for it. Tables being loaded are pinned only until their read
 * ends, so waiting for loads is worth it before running out of slots (and
 * safe: a load waits for nothing but its read). Lock held, dropped to wait.
 */
static size_t find_or_make_room(struct vd_cache *c, uint64_t off)
{
    size_t i;
    while (((i = find(c, off)) != NO_ENTRY && c->entries[i].loading) ||
           (i == NO_ENTRY && c->nloading && !slot_available(c)))
        pthread_cond_wait(&c->loaded, &c->lock);
    return i;
}

/* Take a slot for the table at off and make it findable. Lock held. */
static int insert(struct vd_cache *c, uint64_t off, size_t *slot)
{
    int rc = take_slot(c, slot);
    if (rc == 0) {
        c->entries[*slot] = (struct entry){ .off = off, .used = true,
                                            .next = c->buckets[bucket_of(c, off)] };
        c->buckets[bucket_of(c, off)] = *slot;
    }
    return rc;
}

/*
 * Read the table at off into a new entry, without holding the lock: readers
 * share the cache, and one must not wait for a table read (from the disk,
 * perhaps) that it does not need. Meanwhile the entry is pinned, so that
 * nobody evicts it, and loading, so that whoever wants it waits. What the
 * file holds is current: a table changes only under the image's exclusive
 * lock, and a dirty table is written back before it leaves the cache. Lock
 * held on entry and on return.
 */
static int load(struct vd_cache *c, uint64_t off, size_t *slot)
{
    int rc = insert(c, off, slot);
    if (rc < 0)
        return rc;
    struct entry *e = &c->entries[*slot];
    e->loading = true;
    pin(c, e);
    c->nloading++;
    pthread_mutex_unlock(&c->lock);
    rc = vd_file_pread(c->file, table_of(c, *slot), c->table_size, off);
    pthread_mutex_lock(&c->lock);
    e->loading = false;
    unpin(c, e);
    c->nloading--;
    if (rc < 0)
        unlink_entry(c, *slot);
    pthread_cond_broadcast(&c->loaded);
    return rc;
}

int vd_cache_get(struct vd_cache *c, uint64_t off, bool fresh, void **table)
{
    pthread_mutex_lock(&c->lock);
    size_t i = find_or_make_room(c, off);
    int rc = 0;
    if (i == NO_ENTRY)
        rc = fresh ? insert(c, off, &i) : load(c, off, &i);
    if (rc == 0 && fresh)
        memset(table_of(c, i), 0, c->table_size);
    if (rc == 0) {
        struct entry *e = &c->entries[i];
        pin(c, e);
        e->referenced = true;
        if (fresh && !e->dirty) {
            e->dirty = true;
            c->ndirty++;
        }
        *table = table_of(c, i);
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void vd_cache_put(struct vd_cache *c, void *table)
{
    pthread_mutex_lock(&c->lock);
    unpin(c, &c->entries[index_of(c, table)]);
    pthread_mutex_unlock(&c->lock);
}

void vd_cache_mark_dirty(struct vd_cache *c, void *table)
{
    pthread_mutex_lock(&c->lock);
    struct entry *e = &c->entries[index_of(c, table)];
    if (!e->dirty) {
        e->dirty = true;
        c->ndirty++;
    }
    pthread_mutex_unlock(&c->lock);
}

void vd_cache_forget(struct vd_cache *c, uint64_t off)
{
    pthread_mutex_lock(&c->lock);
    size_t i = find(c, off);
    if (i != NO_ENTRY && !c->entries[i].pins) {
        if (c->entries[i].dirty)
            c->ndirty--;
        c->entries[i].dirty = false;
        unlink_entry(c, i);
    }
    pthread_mutex_unlock(&c->lock);
}

bool vd_cache_has_dirty(struct vd_cache *c)
{
    pthread_mutex_lock(&c->lock);
    bool dirty = c->ndirty != 0;
    pthread_mutex_unlock(&c->lock);
    return dirty;
}

int vd_cache_writeback(struct vd_cache *c)
{
    pthread_mutex_lock(&c->lock);
    int rc = c->ndirty ? run_hook(c) : 0;
    for (size_t i = 0; i < c->capacity && rc == 0 && c->ndirty; i++)
        if (c->entries[i].used && c->entries[i].dirty)
            rc = write_entry(c, i);
    pthread_mutex_unlock(&c->lock);
    return rc;
}
