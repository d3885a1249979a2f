/*
 * A bounded write-back cache of fixed-size metadata tables (qcow2 L2 tables
 * and refcount blocks; grain tables and BAT pages for the other sparse
 * formats), keyed by host offset.
 *
 * Ordering: a cache may name a hook that runs before any of its dirty tables
 * is written (the L2 cache's hook writes the refcount cache and syncs the
 * file, so that data and refcount increases reach the disk before the L2
 * entries that point at them).
 *
 * Concurrency: get/put are safe from concurrent readers, and a table that
 * is not cached is read without the cache's lock, so that one reader's miss
 * does not hold up the others. Changing a table's bytes (and mark_dirty)
 * requires the image's metadata lock held alone (cow/engine.h), so a table
 * is still while anyone holds that lock shared. A get may evict a dirty
 * table under the shared lock: its write and the before-write hook then
 * run beside other lookups and data writes, never beside a change of a
 * table, and the hook must be safe for that (qcow2's is: the layout check
 * takes its own turn, the refcount cache and the sync lock themselves).
 */
#ifndef VD_COW_CACHE_H
#define VD_COW_CACHE_H

#include "core/internal.h"

struct vd_cache;

int vd_cache_new(struct vd_cache **out, vd_file *file, size_t table_size, size_t capacity);
/* Free the cache without writing anything back. */
void vd_cache_free(struct vd_cache *c);

/*
 * Pin the table at host offset off. With fresh, the table is new: it is
 * zero-filled and dirty, not read. Every get is paired with a put.
 */
int vd_cache_get(struct vd_cache *c, uint64_t off, bool fresh, void **table);
void vd_cache_put(struct vd_cache *c, void *table);
void vd_cache_mark_dirty(struct vd_cache *c, void *table);

/* Forget a table (its cluster was freed); a pinned table is kept. */
void vd_cache_forget(struct vd_cache *c, uint64_t off);

/* Write every dirty table, running the before-write hook first. */
int vd_cache_writeback(struct vd_cache *c);
bool vd_cache_has_dirty(struct vd_cache *c);

typedef int (*vd_cache_hook)(void *ctx);
void vd_cache_set_before_write(struct vd_cache *c, vd_cache_hook hook, void *ctx);

#endif
