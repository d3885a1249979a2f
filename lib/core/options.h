/*
 * qemu-img style option strings: "key=value,key=value", where ",," stands
 * for a literal comma inside a value.
 */
#ifndef VD_CORE_OPTIONS_H
#define VD_CORE_OPTIONS_H

#ifndef VD_BUILDING_LIBRARY
#error "lib/core/options.h is internal to libvdisk"
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vd_option_desc {
    const char *name;
    const char *help;
    const char *default_value; /* NULL if none */
};

struct vd_kv_pair {
    char *key;
    char *value;
};

struct vd_kv {
    struct vd_kv_pair *pairs;
    size_t count;
};

/* Parse text (may be NULL or empty). Duplicate keys: the last one wins. */
int vd_kv_parse(struct vd_kv *kv, const char *text);
void vd_kv_free(struct vd_kv *kv);
/* Fail with VD_EINVAL naming the first key not in allowed. */
int vd_kv_check_keys(const struct vd_kv *kv, const struct vd_option_desc *allowed,
                     const char *format);

/* Set key to a copy of value (replacing any earlier value). */
int vd_kv_set(struct vd_kv *kv, const char *key, const char *value);

/* The value of key, or NULL. */
const char *vd_kv_get(const struct vd_kv *kv, const char *key);
/* Typed getters: return 0 (leaving *out = dflt when absent) or VD_EINVAL. */
int vd_kv_get_bool(const struct vd_kv *kv, const char *key, bool dflt, bool *out);
int vd_kv_get_size(const struct vd_kv *kv, const char *key, uint64_t dflt, uint64_t *out);
/* Value must be one of choices (NULL-terminated); *out is its index. */
int vd_kv_get_choice(const struct vd_kv *kv, const char *key, const char *const *choices,
                     size_t dflt, size_t *out);

#endif
