/* Byte sizes as qemu-img reads and prints them. */
#ifndef VDISK_SIZE_H
#define VDISK_SIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Parse a size the way qemu's qemu_strtosz() does: decimal (or 0x hex)
 * bytes, an optional fraction, and an optional suffix b/B (bytes) or
 * k/K, M, G, T, P, E (powers of 1024); "1.5G" is fine, a fraction of plain
 * bytes is not. Returns 0, -EINVAL for malformed text, -ERANGE on overflow.
 */
int size_parse(const char *text, uint64_t *out);

/*
 * size_parse() with qemu-img's error messages naming what ("image size",
 * ...); sizes above max are refused too.
 */
bool size_parse_arg(const char *what, const char *text, uint64_t max, uint64_t *out);

/* A size as qemu-img's human output shows it: "10 MiB", "2.19 MiB", "0 B". */
#define SIZE_TEXT_MAX 32
void size_to_text(uint64_t bytes, char text[SIZE_TEXT_MAX]);

#endif /* VDISK_SIZE_H */
