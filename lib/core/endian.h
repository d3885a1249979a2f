/* Unaligned big- and little-endian loads and stores for on-disk structures. */
#ifndef VD_CORE_ENDIAN_H
#define VD_CORE_ENDIAN_H

#include <stdint.h>
#include <string.h>

static inline uint64_t vd_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap64(v);
}
static inline uint32_t vd_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap32(v);
}
static inline uint16_t vd_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap16(v);
}
static inline void vd_put_be64(void *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, sizeof v);
}
static inline void vd_put_be32(void *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, sizeof v);
}
static inline void vd_put_be16(void *p, uint16_t v)
{
    v = __builtin_bswap16(v);
    memcpy(p, &v, sizeof v);
}
static inline uint32_t vd_le32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint64_t vd_le64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint16_t vd_le16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vd_put_le64(void *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}
static inline void vd_put_le32(void *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}
static inline void vd_put_le16(void *p, uint16_t v)
{
    memcpy(p, &v, sizeof v);
}

#endif
