/*
 * A structure-aware mutator for the image targets.
 *
 * Byte-level mutations of a qcow2 image mostly land in guest data or in
 * zero padding, and rarely produce the values that matter in metadata (an
 * offset of another cluster of the file, a flag bit, a size near 2^63). Half
 * of the time, when the input is a qcow2 image, this mutator instead locates
 * the metadata fields of the image (header, header extensions, L1 and L2
 * entries, refcount table and blocks, snapshot table) and rewrites one of
 * them with an interesting value. The other half, and for any other input,
 * it defers to libFuzzer's own mutations. FUZZ_PLAIN_MUTATOR=1 turns it off.
 *
 * It parses untrusted bytes, so every access is bounds-checked; it never
 * grows the input.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

enum { MAX_FIELDS = 4096 };

enum category { HEADER, EXTENSION, L1, L2, REFCOUNT, SNAPSHOT, NCATEGORIES };

struct field {
    uint32_t off;
    uint8_t width; /* 1, 2, 4 or 8 bytes, big-endian */
};

struct fields {
    struct field f[NCATEGORIES][MAX_FIELDS];
    size_t n[NCATEGORIES];
    size_t nonzero[NCATEGORIES]; /* the first nonzero[c] fields of c are nonzero table entries */
};

struct image {
    const uint8_t *p;
    size_t size;
    uint64_t cs;
    unsigned cluster_bits;
};

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static uint64_t get(const uint8_t *p, size_t size, uint64_t off, unsigned width)
{
    uint64_t v = 0;
    if (off > size || width > size - off)
        return 0;
    for (unsigned i = 0; i < width; i++)
        v = v << 8 | p[off + i];
    return v;
}

static void put(uint8_t *p, uint64_t off, unsigned width, uint64_t v)
{
    for (unsigned i = width; i-- > 0; v >>= 8)
        p[off + i] = (uint8_t)v;
}

static void add(struct fields *fs, enum category c, uint64_t off, unsigned width, size_t size)
{
    if (fs->n[c] < MAX_FIELDS && off <= size && width <= size - off)
        fs->f[c][fs->n[c]++] = (struct field){ (uint32_t)off, (uint8_t)width };
}

/* Table entries at off: nonzero ones first, so that they can be preferred. */
static void add_table(struct fields *fs, enum category c, const struct image *im, uint64_t off,
                      uint64_t entries, unsigned stride, unsigned width)
{
    if (off >= im->size)
        return;
    uint64_t max = (im->size - off) / stride;
    entries = entries < max ? entries : max;
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t i = 0; i < entries && fs->n[c] < MAX_FIELDS; i++) {
            bool nz = get(im->p, im->size, off + i * stride, width) != 0;
            if (nz == (pass == 0))
                add(fs, c, off + i * stride, width, im->size);
        }
        if (pass == 0)
            fs->nonzero[c] = fs->n[c];
    }
}

static void locate(const struct image *im, struct fields *fs)
{
    static const struct { uint8_t off, width; } header[] = {
        { 4, 4 }, { 8, 8 }, { 16, 4 }, { 20, 4 }, { 24, 8 }, { 32, 4 }, { 36, 4 }, { 40, 8 },
        { 48, 8 }, { 56, 4 }, { 60, 4 }, { 64, 8 }, { 72, 8 }, { 80, 8 }, { 88, 8 }, { 96, 4 },
        { 100, 4 }, { 104, 1 },
    };
    const uint8_t *p = im->p;
    size_t size = im->size;
    uint32_t version = (uint32_t)get(p, size, 4, 4);
    for (size_t i = 0; i < sizeof header / sizeof header[0]; i++)
        if (version >= 3 || header[i].off < 72)
            add(fs, HEADER, header[i].off, header[i].width, size);

    /* header extensions */
    uint64_t pos = version >= 3 ? get(p, size, 100, 4) : 72;
    for (int n = 0; n < 32 && pos + 8 <= size && pos < im->cs; n++) {
        uint32_t type = (uint32_t)get(p, size, pos, 4), len = (uint32_t)get(p, size, pos + 4, 4);
        add(fs, EXTENSION, pos, 4, size);
        add(fs, EXTENSION, pos + 4, 4, size);
        if (type == 0)
            break;
        for (uint64_t k = 0; k < len && k < 64; k += 8)
            add(fs, EXTENSION, pos + 8 + k, len - k >= 8 ? 8 : 1, size);
        pos += 8 + (((uint64_t)len + 7) & ~7ull);
    }

    uint64_t cs = im->cs;
    bool extl2 = version >= 3 && (get(p, size, 72, 8) & 16);
    unsigned l2_stride = extl2 ? 16 : 8;
    uint64_t l1_size = get(p, size, 36, 4), l1_off = get(p, size, 40, 8);
    add_table(fs, L1, im, l1_off, l1_size, 8, 8);
    /* the L2 tables of the first L1 entries */
    for (uint64_t i = 0; i < l1_size && i < 16; i++) {
        uint64_t l2 = get(p, size, l1_off + i * 8, 8) & 0x00fffffffffffe00ull;
        if (l2 && l2 < size) {
            add_table(fs, L2, im, l2, cs / l2_stride, l2_stride, 8);
            if (extl2)
                add_table(fs, L2, im, l2 + 8, cs / l2_stride, l2_stride, 8);
        }
    }

    /* refcount table and the first refcount blocks */
    uint64_t rt_off = get(p, size, 48, 8), rt_clusters = get(p, size, 56, 4);
    unsigned order = version >= 3 ? (unsigned)get(p, size, 96, 4) : 4;
    unsigned rb_width = order >= 3 && order <= 6 ? 1u << (order - 3) : 1;
    add_table(fs, REFCOUNT, im, rt_off, rt_clusters * cs / 8 < 4096 ? rt_clusters * cs / 8 : 4096, 8, 8);
    for (uint64_t i = 0; i < 4; i++) {
        uint64_t rb = get(p, size, rt_off + i * 8, 8) & ~(cs - 1);
        if (rb && rb < size)
            add_table(fs, REFCOUNT, im, rb, cs / rb_width, rb_width, rb_width);
    }

    /* snapshot table: the fixed part and the standard extra data of each entry */
    uint64_t nb = get(p, size, 60, 4), sn = get(p, size, 64, 8);
    static const struct { uint8_t off, width; } entry[] = {
        { 0, 8 }, { 8, 4 }, { 12, 2 }, { 14, 2 }, { 16, 4 }, { 20, 4 }, { 24, 8 }, { 32, 4 }, { 36, 4 },
    };
    for (uint64_t i = 0; i < nb && i < 16 && sn + 40 <= size; i++) {
        for (size_t k = 0; k < sizeof entry / sizeof entry[0]; k++)
            add(fs, SNAPSHOT, sn + entry[k].off, entry[k].width, size);
        uint64_t extra = get(p, size, sn + 36, 4);
        for (uint64_t k = 0; k + 8 <= extra && k < 32; k += 8)
            add(fs, SNAPSHOT, sn + 40 + k, 8, size);
        /* and the snapshot's L1 table */
        add_table(fs, L1, im, get(p, size, sn, 8), get(p, size, sn + 8, 4), 8, 8);
        sn += (40 + extra + get(p, size, sn + 12, 2) + get(p, size, sn + 14, 2) + 7) & ~7ull;
    }
}

static uint64_t new_value(const struct image *im, const struct fields *fs, enum category c,
                          struct field f)
{
    uint64_t old = get(im->p, im->size, f.off, f.width);
    uint64_t clusters = (im->size + im->cs - 1) / im->cs;
    uint64_t mask = f.width == 8 ? UINT64_MAX : (1ull << (8 * f.width)) - 1;
    uint64_t v;
    switch (below(10)) {
    case 0: /* another cluster of the file, with the L1/L2 flags now and then */
        v = below(clusters + 2) * im->cs;
        if (below(2))
            v |= 1ull << 63; /* COPIED */
        if (c == L2 && !below(6))
            v |= 1ull << 62; /* COMPRESSED */
        if (c == L2 && !below(6))
            v |= 1; /* ZERO */
        break;
    case 1: {
        static const uint64_t interesting[] = {
            0, 1, 2, 7, 8, 9, 12, 16, 21, 22, 31, 32, 63, 64, 72, 104, 112, 255, 256, 511, 512,
            4096, 65536, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
            0x100000000ull, 0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull,
            0x4000000000000000ull, 0x00fffffffffffe00ull, 0xc000000000000000ull,
        };
        v = interesting[below(sizeof interesting / sizeof interesting[0])];
        break;
    }
    case 2:
        v = im->size + (below(3) - 1) * im->cs;
        break;
    case 3:
        v = old ^ (1ull << below(8 * f.width));
        break;
    case 4:
        v = old + (below(2) ? 1 : -1) * (int64_t)(below(3) == 0 ? 1 : below(2) ? 512 : im->cs);
        break;
    case 5: { /* the value of another field of the same kind (aliasing) */
        struct field o = fs->f[c][below(fs->n[c])];
        v = get(im->p, im->size, o.off, o.width);
        break;
    }
    case 6:
        v = old * 2 + below(2);
        break;
    case 7:
        v = old >> below(8 * f.width);
        break;
    case 8:
        v = 0;
        break;
    default:
        v = rnd();
        break;
    }
    return v & mask;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    static int plain = -1;
    if (plain < 0)
        plain = getenv("FUZZ_PLAIN_MUTATOR") && *getenv("FUZZ_PLAIN_MUTATOR") == '1';
    rng_state = seed * 0x2545f4914f6cdd1dull + 1;
    if (plain || size < 112 || get(data, size, 0, 4) != 0x514649fbu || below(2))
        return LLVMFuzzerMutate(data, size, max_size);
    struct image im = { data, size, 0, (unsigned)get(data, size, 20, 4) };
    if (im.cluster_bits < 9 || im.cluster_bits > 21)
        im.cluster_bits = 16;
    im.cs = 1ull << im.cluster_bits;

    static struct fields fs;
    memset(fs.n, 0, sizeof fs.n);
    memset(fs.nonzero, 0, sizeof fs.nonzero);
    locate(&im, &fs);
    static const unsigned weight[NCATEGORIES] = { 30, 8, 15, 27, 10, 10 };
    unsigned mutations = 1 + (unsigned)below(3);
    for (unsigned m = 0; m < mutations; m++) {
        unsigned total = 0;
        for (int c = 0; c < NCATEGORIES; c++)
            total += fs.n[c] ? weight[c] : 0;
        if (!total)
            break;
        unsigned r = (unsigned)below(total);
        int c = 0;
        while (!fs.n[c] || r >= weight[c]) {
            r -= fs.n[c] ? weight[c] : 0;
            c++;
        }
        size_t i = fs.nonzero[c] && below(4) ? below(fs.nonzero[c]) : below(fs.n[c]);
        struct field f = fs.f[c][i];
        put(data, f.off, f.width, new_value(&im, &fs, (enum category)c, f));
    }
    return size;
}
