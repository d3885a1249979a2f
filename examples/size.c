/* qemu-compatible size parsing (util/cutils.c: do_strtosz) and printing. */
#include "size.h"

#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The multiplier a suffix character stands for, or 0 if it is none. */
static uint64_t suffix_multiplier(char c)
{
    static const char suffixes[] = "KMGTPE";
    if (c == 'b' || c == 'B')
        return 1;
    const char *p = c ? strchr(suffixes, toupper((unsigned char)c)) : NULL;
    return p ? UINT64_C(1) << (10 * (p - suffixes + 1)) : 0;
}

static int parse_integer(const char *text, int base, char **end, uint64_t *out)
{
    errno = 0;
    *out = strtoull(text, end, base);
    if (*end == text)
        return -EINVAL;
    return errno == ERANGE ? -ERANGE : 0;
}

/*
 * The fraction after the decimal point as 0.64 fixed point. A lone '.' is
 * skipped (so "1.k" works); an exponent makes the whole text invalid.
 */
static int parse_fraction(char **p, uint64_t *fraction)
{
    char *end;
    errno = 0;
    double value = strtod(*p, &end);
    *fraction = 0;
    if (end == *p || errno || !isfinite(value)) {
        (*p)++;
        return 0;
    }
    if (memchr(*p, 'e', (size_t)(end - *p)) || memchr(*p, 'E', (size_t)(end - *p)))
        return -EINVAL;
    *p = end;
    /* value is below 1; keep its conversion in range when it rounds up to 1 */
    *fraction = value * 0x1p64 >= 0x1p64 ? UINT64_MAX : (uint64_t)(value * 0x1p64);
    return 0;
}

int size_parse(const char *text, uint64_t *out)
{
    char *p;
    uint64_t value, fraction = 0;
    int rc = parse_integer(text, 10, &p, &value);
    if (rc < 0)
        return rc;
    if (memchr(text, '-', (size_t)(p - text))) /* strtoull takes "-1" */
        return -EINVAL;
    if (value == 0 && (*p == 'x' || *p == 'X')) {
        /* hexadecimal: no fraction, no suffix */
        rc = parse_integer(text, 16, &p, &value);
        if (rc < 0)
            return rc;
        if (*p == '.' || suffix_multiplier(*p))
            return -EINVAL;
    } else if (*p == '.' && parse_fraction(&p, &fraction) < 0) {
        return -EINVAL;
    }
    uint64_t multiplier = suffix_multiplier(*p);
    if (multiplier)
        p++;
    else
        multiplier = 1;
    if (*p)
        return -EINVAL;
    if (multiplier == 1 && fraction) /* a fraction needs a unit */
        return -EINVAL;
    unsigned __int128 frac_part = (unsigned __int128)fraction * multiplier;
    unsigned __int128 total = (unsigned __int128)value * multiplier + (uint64_t)(frac_part >> 64) +
                              (((uint64_t)frac_part) >> 63); /* round half up */
    if (total > UINT64_MAX)
        return -ERANGE;
    *out = (uint64_t)total;
    return 0;
}

bool size_parse_arg(const char *what, const char *text, uint64_t max, uint64_t *out)
{
    int rc = size_parse(text, out);
    if (rc == -EINVAL) {
        cli_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", what);
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return false;
    }
    if (rc < 0 || *out > max) {
        cli_error("Invalid %s specified. Must be between 0 and %" PRIu64 ".", what, max);
        return false;
    }
    return true;
}

void size_to_text(uint64_t bytes, char text[SIZE_TEXT_MAX])
{
    static const char *const units[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int exponent;
    /* qemu's rule: switch to the next unit once the number would reach 1000 */
    frexp((double)bytes / (1000.0 / 1024.0), &exponent);
    int unit = (exponent - 1) / 10;
    snprintf(text, SIZE_TEXT_MAX, "%0.3g %sB", (double)bytes / (double)(UINT64_C(1) << (unit * 10)),
             units[unit]);
}
