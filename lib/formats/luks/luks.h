/* What the luks format shares with formats that keep a LUKS header inside (qcow2). */
#ifndef VD_FORMATS_LUKS_H
#define VD_FORMATS_LUKS_H

#include "core/internal.h"
#include "crypto/crypto.h"

/*
 * Publish header h as properties, as qemu-img info shows a LUKS header: each
 * key after prefix ("" for luks, "encrypt." for qcow2), and "format" with the
 * value format where qemu-img shows it when format is not NULL.
 */
int vd_luks_describe(vd_image *img, const struct vd_luks_header *h, const char *prefix,
                     const char *format);

#endif
