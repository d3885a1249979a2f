/*
 * Formats we recognise but cannot open yet. Probing must still name them:
 * an image of another format opened as raw would show its metadata to the
 * guest and let writes destroy it. Each entry goes away when its backend
 * lands in lib/formats/.
 */
#include "core/internal.h"
#include "core/endian.h"

#include <string.h>

static bool starts_with(const uint8_t *head, size_t len, const char *magic)
{
    size_t n = strlen(magic);
    return len >= n && memcmp(head, magic, n) == 0;
}

static int probe_vpc(const uint8_t *h, size_t len, uint64_t size)
{
    return starts_with(h, len, "conectix") ? 100 : 0;
}

static int probe_vhdx(const uint8_t *h, size_t len, uint64_t size)
{
    return starts_with(h, len, "vhdxfile") ? 100 : 0;
}

static int probe_vdi(const uint8_t *h, size_t len, uint64_t size)
{
    return len >= 0x44 && vd_le32(h + 0x40) == 0xbeda107fu ? 100 : 0;
}

static int probe_bochs(const uint8_t *h, size_t len, uint64_t size)
{
    return starts_with(h, len, "Bochs Virtual HD Image") ? 100 : 0;
}

static int probe_cloop(const uint8_t *h, size_t len, uint64_t size)
{
    return starts_with(h, len, "#!/bin/sh\n#V2.0 Format\n") ? 100 : 0;
}

static int probe_parallels(const uint8_t *h, size_t len, uint64_t size)
{
    return starts_with(h, len, "WithoutFreeSpace") || starts_with(h, len, "WithouFreSpacExt") ? 100 : 0;
}

static int probe_qed(const uint8_t *h, size_t len, uint64_t size)
{
    return len >= 4 && memcmp(h, "QED", 4) == 0 ? 100 : 0;
}

static const struct recognized {
    const char *name;
    int (*probe)(const uint8_t *head, size_t len, uint64_t file_size);
} recognized[] = {
    { "vpc", probe_vpc }, { "vhdx", probe_vhdx }, { "vdi", probe_vdi }, { "bochs", probe_bochs },
    { "cloop", probe_cloop }, { "parallels", probe_parallels }, { "qed", probe_qed },
};

const char *vd_recognize_unsupported(const uint8_t *head, size_t len, uint64_t file_size)
{
    for (size_t i = 0; i < sizeof recognized / sizeof recognized[0]; i++)
        if (recognized[i].probe(head, len, file_size))
            return recognized[i].name;
    return NULL;
}
