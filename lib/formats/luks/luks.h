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

/* The key slots of a header, for an amend: where the header lives, its unlocked cipher. */
struct vd_luks_keys {
    struct vd_luks_header *header;
    const struct vd_luks_io *io;
    const struct vd_crypto *unlocked; /* the payload cipher vd_luks_unlock() gave */
    const char *prefix;               /* of the option names: "" (luks), "encrypt." (qcow2) */
};

/*
 * qemu-img amend's key slot options, each after k->prefix: state=active
 * with new-secret (and optionally keyslot, old-secret, iter-time) adds a
 * passphrase; state=inactive with keyslot or old-secret erases slots. The
 * header is rewritten through k->io; the caller syncs and shows it anew.
 */
int vd_luks_amend_slots(vd_image *img, const struct vd_luks_keys *k, const struct vd_kv *opts);

#endif
