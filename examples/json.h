/*
 * A tiny streaming JSON writer producing qemu's two layouts: the indented
 * one of 'qemu-img info --output=json' and the one-object-per-line one of
 * 'qemu-img map --output=json'. Strings are escaped as QEMU escapes them.
 */
#ifndef VDISK_JSON_H
#define VDISK_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum json_style {
    JSON_PRETTY, /* one member per line, indented by four spaces per level */
    JSON_LINES,  /* objects on one line ("{ "a": 1, "b": 2}"), array elements one per line */
};

#define JSON_MAX_DEPTH 16

struct json_writer {
    FILE *out;
    enum json_style style;
    int depth;
    bool has_members[JSON_MAX_DEPTH]; /* per open container: a separator is due */
    bool is_array[JSON_MAX_DEPTH];
};

void json_init(struct json_writer *w, FILE *out, enum json_style style);

/* Members: key is the member name inside an object, NULL inside an array or at the top. */
void json_begin_object(struct json_writer *w, const char *key);
void json_end_object(struct json_writer *w);
void json_begin_array(struct json_writer *w, const char *key);
void json_end_array(struct json_writer *w);
void json_string(struct json_writer *w, const char *key, const char *value);
void json_uint(struct json_writer *w, const char *key, uint64_t value);
void json_int(struct json_writer *w, const char *key, int64_t value);
void json_bool(struct json_writer *w, const char *key, bool value);
/* A value that is already JSON text (a number from a property, say). */
void json_raw(struct json_writer *w, const char *key, const char *text);

/* Write text as a quoted, escaped JSON string. */
void json_write_string(FILE *out, const char *text);

#endif /* VDISK_JSON_H */
