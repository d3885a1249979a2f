/*
 * An in-memory file layer for the fuzz targets.
 *
 * Installed as libvdisk's file opener (vd_file_set_opener), it serves a small
 * table of named in-memory files and refuses every other path with VD_EPERM,
 * so that a fuzzed image can never make the library open a real file: a
 * backing file, an external data file or anything else an image names is
 * refused unless the target registered that exact path.
 *
 *   read-only files  serve a caller's buffer (the fuzz input itself, not
 *                    copied); opening one for writing fails with VD_EPERM and
 *                    writes to it fail with VD_EREADONLY
 *   scratch files    writable and growable up to a cap (writes, truncates and
 *                    preallocations past it fail with VD_ENOSPC), for
 *                    vd_create() (empty) and the write target (a copy of the
 *                    input); VD_FILE_CREATE opens one (vd_create() then
 *                    empties it), it never creates an unregistered path
 *
 * Nothing here touches the disk. Not thread-safe: the fuzz targets are
 * single-threaded.
 */
#ifndef VD_FUZZ_MEMFILE_H
#define VD_FUZZ_MEMFILE_H

#include <stddef.h>
#include <stdint.h>

/*
 * A directory that does not exist: VD_OPEN_CONFINED cannot open it, so it
 * refuses every file the image names.
 */
#define MEMFILE_DIR   "/nonexistent-vdisk-fuzz"
#define MEMFILE_IMAGE MEMFILE_DIR "/image"

/* Install the opener (idempotent). Files opened before keep their layer. */
void memfile_install(void);
/* Restore the POSIX opener. */
void memfile_uninstall(void);

/*
 * Serve data[0..size) read-only at path. The buffer is not copied: it must
 * outlive every handle (call memfile_clear() before it goes away).
 */
int memfile_add_readonly(const char *path, const uint8_t *data, size_t size);
/* A writable, initially empty file at path that can grow to cap bytes. */
int memfile_add_scratch(const char *path, size_t cap);
/* A writable copy of data[0..size) at path that can grow to cap bytes. */
int memfile_add_copy(const char *path, const uint8_t *data, size_t size, size_t cap);
/* The current content of a registered file (NULL if there is none). */
const uint8_t *memfile_content(const char *path, size_t *size);

/* Handles currently open through the layer (a leak check for the targets). */
size_t memfile_open_count(void);
/* Forget every file. Aborts if a handle is still open: the library leaked it. */
void memfile_clear(void);

#endif
