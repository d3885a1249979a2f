/* The JSON writer: layout per style, escaping as QEMU's qobject/qjson.c does. */
#include "json.h"

#include <assert.h>
#include <inttypes.h>

void json_init(struct json_writer *w, FILE *out, enum json_style style)
{
    *w = (struct json_writer){ .out = out, .style = style };
}

static void indent(struct json_writer *w)
{
    fprintf(w->out, "%*s", 4 * w->depth, "");
}

/* Write the separator and key that go before a value in the open container. */
static void begin_value(struct json_writer *w, const char *key)
{
    if (w->depth > 0) {
        int top = w->depth - 1;
        bool first = !w->has_members[top];
        if (w->style == JSON_PRETTY) {
            fputs(first ? "\n" : ",\n", w->out);
            indent(w);
        } else if (w->is_array[top]) {
            fputs(first ? "" : ",\n", w->out);
        } else {
            fputs(first ? " " : ", ", w->out);
        }
        w->has_members[top] = true;
    }
    if (key) {
        json_write_string(w->out, key);
        fputs(": ", w->out);
    }
}

/* A complete top-level value ends its line. */
static void end_value(struct json_writer *w)
{
    if (w->depth == 0)
        fputc('\n', w->out);
}

static void begin_container(struct json_writer *w, const char *key, bool is_array)
{
    begin_value(w, key);
    fputc(is_array ? '[' : '{', w->out);
    assert(w->depth < JSON_MAX_DEPTH);
    w->has_members[w->depth] = false;
    w->is_array[w->depth] = is_array;
    w->depth++;
}

static void end_container(struct json_writer *w)
{
    assert(w->depth > 0);
    w->depth--;
    bool is_array = w->is_array[w->depth];
    if (w->style == JSON_PRETTY) { /* QEMU closes even an empty container on its own line */
        fputc('\n', w->out);
        indent(w);
    }
    fputc(is_array ? ']' : '}', w->out);
    end_value(w);
}

void json_begin_object(struct json_writer *w, const char *key)
{
    begin_container(w, key, false);
}

void json_end_object(struct json_writer *w)
{
    end_container(w);
}

void json_begin_array(struct json_writer *w, const char *key)
{
    begin_container(w, key, true);
}

void json_end_array(struct json_writer *w)
{
    end_container(w);
}

void json_string(struct json_writer *w, const char *key, const char *value)
{
    begin_value(w, key);
    json_write_string(w->out, value);
    end_value(w);
}

void json_uint(struct json_writer *w, const char *key, uint64_t value)
{
    begin_value(w, key);
    fprintf(w->out, "%" PRIu64, value);
    end_value(w);
}

void json_int(struct json_writer *w, const char *key, int64_t value)
{
    begin_value(w, key);
    fprintf(w->out, "%" PRId64, value);
    end_value(w);
}

void json_bool(struct json_writer *w, const char *key, bool value)
{
    json_raw(w, key, value ? "true" : "false");
}

void json_raw(struct json_writer *w, const char *key, const char *text)
{
    begin_value(w, key);
    fputs(text, w->out);
    end_value(w);
}

/*
 * Decode the UTF-8 sequence at s. Returns its code point, or -1 for a
 * malformed, overlong or surrogate sequence; *len is the bytes consumed.
 */
static int32_t utf8_decode(const unsigned char *s, size_t *len)
{
    static const int32_t smallest[] = { 0, 0x80, 0x800, 0x10000 }; /* by continuation bytes */
    int extra = (s[0] & 0xE0) == 0xC0 ? 1 : (s[0] & 0xF0) == 0xE0 ? 2 : (s[0] & 0xF8) == 0xF0 ? 3 : 0;
    *len = 1;
    if (s[0] < 0x80)
        return s[0];
    if (extra == 0) /* a stray continuation byte or an invalid lead byte */
        return -1;
    int32_t cp = s[0] & (0x3F >> extra);
    for (int i = 1; i <= extra; i++) {
        if ((s[i] & 0xC0) != 0x80) { /* also stops at the terminating NUL */
            *len = (size_t)i;
            return -1;
        }
        cp = cp << 6 | (s[i] & 0x3F);
    }
    *len = (size_t)extra + 1;
    if (cp < smallest[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    return cp;
}

/* Like QEMU: short escapes where JSON has them, \uXXXX for the rest of
 * control and non-ASCII characters, U+FFFD for malformed UTF-8. */
static void write_code_point(FILE *out, int32_t cp)
{
    switch (cp) {
    case '"': fputs("\\\"", out); return;
    case '\\': fputs("\\\\", out); return;
    case '\b': fputs("\\b", out); return;
    case '\f': fputs("\\f", out); return;
    case '\n': fputs("\\n", out); return;
    case '\r': fputs("\\r", out); return;
    case '\t': fputs("\\t", out); return;
    }
    if (cp < 0)
        cp = 0xFFFD;
    if (cp > 0xFFFF) /* beyond the BMP: a surrogate pair */
        fprintf(out, "\\u%04X\\u%04X", 0xD800 + ((cp - 0x10000) >> 10),
                0xDC00 + ((cp - 0x10000) & 0x3FF));
    else if (cp < 0x20 || cp >= 0x7F)
        fprintf(out, "\\u%04X", (unsigned)cp);
    else
        fputc(cp, out);
}

void json_write_string(FILE *out, const char *text)
{
    const unsigned char *p = (const unsigned char *)text;
    fputc('"', out);
    while (*p) {
        size_t len;
        write_code_point(out, utf8_decode(p, &len));
        p += len;
    }
    fputc('"', out);
}
