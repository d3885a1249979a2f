/*
 * Secrets by id, as QEMU's secret objects: a program defines a passphrase
 * once (vd_secret_add()), and option strings name it (key-secret=ID), so
 * that no passphrase needs to travel inside an option string or argv.
 * Values live in libgcrypt's secure memory and are wiped when removed.
 */
#include "core/internal.h"
#include "crypto/cipher.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A passphrase read from a descriptor may be at most this long. */
#define SECRET_MAX_BYTES (64u << 10)
/* The buffer a vd_secret_fn fills (its documented size). */
#define SECRET_FN_BUFFER 4096u

struct secret {
    char *id;
    char *value; /* secure memory, NUL-terminated */
    size_t len;
    struct secret *next;
};

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static struct secret *secrets;

static void secret_destroy(struct secret *s)
{
    vd_secure_free(s->value, s->len + 1);
    free(s->id);
    free(s);
}

/* Unlink the secret named id; the caller holds the lock. */
static struct secret *unlink_secret(const char *id)
{
    for (struct secret **p = &secrets; *p; p = &(*p)->next) {
        if (strcmp((*p)->id, id) == 0) {
            struct secret *s = *p;
            *p = s->next;
            return s;
        }
    }
    return NULL;
}

int vd_secret_add(const char *id, const void *data, size_t length)
{
    if (!id || !*id || (!data && length))
        return vd_err(VD_EINVAL, "vd_secret_add: id and data must not be NULL");
    if (memchr(data, 0, length))
        return vd_err(VD_EINVAL, "vd_secret_add: secret '%s' holds a NUL byte", id);
    struct secret *s = calloc(1, sizeof *s);
    if (s) {
        s->id = strdup(id);
        s->value = (char *)vd_secure_alloc(length + 1);
        s->len = length;
    }
    if (!s || !s->id || !s->value) {
        if (s)
            secret_destroy(s);
        return vd_err(VD_ENOMEM, "vd_secret_add: out of memory");
    }
    memcpy(s->value, data, length);
    pthread_mutex_lock(&secrets_lock);
    struct secret *old = unlink_secret(id);
    s->next = secrets;
    secrets = s;
    pthread_mutex_unlock(&secrets_lock);
    if (old)
        secret_destroy(old);
    return 0;
}

int vd_secret_add_fd(const char *id, int fd)
{
    uint8_t *buf = vd_secure_alloc(SECRET_MAX_BYTES + 1);
    if (!buf)
        return vd_err(VD_ENOMEM, "vd_secret_add_fd: out of memory");
    size_t have = 0;
    int rc = 0;
    while (rc == 0 && have <= SECRET_MAX_BYTES) {
        ssize_t n = read(fd, buf + have, SECRET_MAX_BYTES + 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = vd_err(VD_EIO, "vd_secret_add_fd: %s", strerror(errno));
        else if (n == 0)
            break;
        else
            have += (size_t)n;
    }
    if (rc == 0 && have > SECRET_MAX_BYTES)
        rc = vd_err(VD_ETOOBIG, "vd_secret_add_fd: secret '%s' is longer than %u bytes", id,
                    SECRET_MAX_BYTES);
    if (rc == 0)
        rc = vd_secret_add(id, buf, have);
    vd_secure_free(buf, SECRET_MAX_BYTES + 1);
    return rc;
}

int vd_secret_remove(const char *id)
{
    if (!id)
        return vd_err(VD_EINVAL, "vd_secret_remove: id must not be NULL");
    pthread_mutex_lock(&secrets_lock);
    struct secret *s = unlink_secret(id);
    pthread_mutex_unlock(&secrets_lock);
    if (!s)
        return vd_err(VD_ENOENT, "No secret with id '%s'", id);
    secret_destroy(s);
    return 0;
}

int vd_secret_lookup(const char *id, char **value)
{
    *value = NULL;
    int rc = 0;
    pthread_mutex_lock(&secrets_lock);
    struct secret *s = secrets;
    while (s && strcmp(s->id, id) != 0)
        s = s->next;
    if (!s)
        rc = vd_err(VD_ENOENT, "No secret with id '%s'", id);
    else if (!(*value = (char *)vd_secure_alloc(s->len + 1)))
        rc = vd_err(VD_ENOMEM, "out of memory");
    else
        memcpy(*value, s->value, s->len + 1);
    pthread_mutex_unlock(&secrets_lock);
    return rc;
}

void vd_secret_free(char *value)
{
    if (value)
        vd_secure_free(value, strlen(value) + 1);
}

/* A copy of len bytes of data, NUL-terminated, in secure memory; NULL if memory runs out. */
static char *secure_copy(const char *data, size_t len)
{
    char *copy = (char *)vd_secure_alloc(len + 1);
    if (copy)
        memcpy(copy, data, len);
    return copy;
}

/* Ask o->secret_fn for img's passphrase: 0 with *passphrase NULL when it has none to give. */
static int ask_secret_fn(const vd_image *img, const vd_open_opts *o, char **passphrase)
{
    char *buf = (char *)vd_secure_alloc(SECRET_FN_BUFFER);
    if (!buf)
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    int n = o->secret_fn(o->secret_ctx, img->filename, img->depth, buf, SECRET_FN_BUFFER);
    int rc = 0;
    if (n < 0)
        rc = vd_err(vd_error_known(n) ? n : VD_EKEY, "%s: the passphrase callback gave "
                    "none (%s)", img->filename, vd_errname(n));
    else if ((size_t)n >= SECRET_FN_BUFFER)
        rc = vd_err(VD_EINVAL, "%s: the passphrase callback returned %d bytes, more than the "
                    "%u it may", img->filename, n, SECRET_FN_BUFFER - 1);
    else if (memchr(buf, 0, (size_t)n))
        rc = vd_err(VD_EINVAL, "%s: the passphrase callback gave a passphrase with a NUL byte",
                    img->filename);
    else if (n > 0 && !(*passphrase = secure_copy(buf, (size_t)n)))
        rc = vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    vd_secure_free(buf, SECRET_FN_BUFFER);
    return rc;
}

int vd_open_passphrase(const vd_image *img, const vd_open_opts *o, char **passphrase)
{
    *passphrase = NULL;
    if (!o)
        return 0;
    if (o->struct_size > offsetof(vd_open_opts, secret_fn) && o->secret_fn) {
        int rc = ask_secret_fn(img, o, passphrase);
        if (rc < 0 || *passphrase)
            return rc;
    }
    const char *secret = o->struct_size > offsetof(vd_open_opts, secret) ? o->secret : NULL;
    if (secret && !(*passphrase = secure_copy(secret, strlen(secret))))
        return vd_err(VD_ENOMEM, "%s: out of memory", img->filename);
    return 0;
}
