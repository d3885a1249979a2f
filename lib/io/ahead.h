/* What file.c asks of a file growing ahead (ahead.c); only for files whose f->ahead is set. */
#ifndef VD_IO_AHEAD_H
#define VD_IO_AHEAD_H

#include "io/file.h"

/* The size the file has for its users: the end of its data, without the reserve. */
uint64_t vd_file_ahead_size(const vd_file *f);
/*
 * Zeroes are to be written over [off, off + len): note the write, and return
 * how many of its first bytes must really be written. Bytes past the end of
 * the data inside the reserve were never written since it was reserved and
 * read as zeroes already (the reserve is allocated zeroed).
 */
uint64_t vd_file_ahead_zeroes(vd_file *f, uint64_t off, uint64_t len);
/* Bytes reserved past the end of the data. */
uint64_t vd_file_ahead_reserved(const vd_file *f);
/* Truncate to size, dropping the reserve. */
int vd_file_ahead_truncate(vd_file *f, uint64_t size);
/* Before closing: trim the reserve from the host file and forget it. */
void vd_file_ahead_end(vd_file *f);

#endif
