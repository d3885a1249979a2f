/* Helpers shared by the crash, fault and kill tests (see crashutil.h). */
#include "crashutil.h"

#include "formats/qcow2/qcow2.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

unsigned cu_scale(void)
{
    const char *s = getenv("VD_CRASH_SCALE");
    long v = s && *s ? strtol(s, NULL, 10) : 1;
    return v < 1 ? 1 : (unsigned)v;
}

unsigned cu_slowdown(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return 3;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    return 3;
#else
    return 1;
#endif
#else
    return 1;
#endif
}

uint64_t cu_seed(uint64_t def)
{
    const char *s = getenv("VD_CRASH_SEED");
    return s && *s ? strtoull(s, NULL, 0) : def;
}

int cu_qemu_check(const char *path, const char *fmt, char **output)
{
    const char *qemu = vt_qemu_img();
    if (output)
        *output = NULL;
    if (!qemu)
        return -1;
    int fds[2];
    ck_assert(pipe(fds) == 0);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        execl(qemu, qemu, "check", "-f", fmt, path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 4096;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    for (;;) {
        if (cap - len < 1024) {
            cap *= 2;
            out = realloc(out, cap);
            ck_assert_ptr_nonnull(out);
        }
        ssize_t n = read(fds[0], out + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (output)
        *output = out;
    else
        free(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool cu_qemu_check_ok(const char *path, uint64_t cluster_size, bool *benign, char *why, size_t whylen)
{
    char *out;
    int st = cu_qemu_check(path, "qcow2", &out);
    struct cu_verdict v;
    cu_classify(out ? out : "", cluster_size, &v);
    free(out);
    *benign = st == 2 && v.errors && v.errors == v.copied_benign && !cu_strict();
    if (st == -1 || st == 0 || st == 3 || *benign)
        return true;
    snprintf(why, whylen, "qemu-img check exits with %d; %s", st, v.first_other);
    return false;
}

/* The reference count a "Leaked cluster N refcount=R reference=F" line gives for cluster, or -1. */
static long long leaked_references(const char *log, uint64_t cluster)
{
    for (const char *p = strstr(log, "Leaked cluster "); p; p = strstr(p + 1, "Leaked cluster ")) {
        unsigned long long c, refcount, references;
        if (sscanf(p, "Leaked cluster %llu refcount=%llu reference=%llu", &c, &refcount, &references) == 3 &&
            c == cluster)
            return (long long)references;
    }
    return -1;
}

void cu_classify(const char *log, uint64_t cluster_size, struct cu_verdict *v)
{
    memset(v, 0, sizeof *v);
    for (const char *line = log; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char buf[256];
        snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), line);
        line = eol ? eol + 1 : NULL;
        if (strncmp(buf, "ERROR", 5) != 0)
            continue;
        v->errors++;
        const char *e = strstr(buf, "_entry=");
        const char *rcp = strstr(buf, "refcount=");
        unsigned long long entry, refcount;
        if (strstr(buf, "OFLAG_COPIED") && e && rcp && sscanf(e + 7, "%llx", &entry) == 1 &&
            sscanf(rcp + 9, "%llu", &refcount) == 1) {
            bool copied = entry >> 63;
            uint64_t cluster = (entry & 0x00fffffffffffe00ull) / cluster_size;
            long long refs = leaked_references(log, cluster);
            if (refs < 0)
                refs = (long long)refcount;
            if (!copied || refs <= 1) {
                v->copied_benign++;
                continue;
            }
            v->copied_dangerous++;
        }
        if (!v->first_other[0])
            snprintf(v->first_other, sizeof v->first_other, "%s", buf);
    }
}

uint8_t *cu_read_image(vd_image *img, uint64_t *size)
{
    vt_ok(vd_get_size(img, size));
    uint8_t *buf = malloc(*size ? (size_t)*size : 1);
    ck_assert_ptr_nonnull(buf);
    if (*size)
        vt_ok(vd_read(img, 0, buf, (size_t)*size, 0));
    return buf;
}

bool cu_strict(void)
{
    const char *s = getenv("VD_CRASH_STRICT");
    return s && *s && strcmp(s, "0") != 0;
}

/* A check's report lines, newline-separated. */
struct log {
    char *text;
    size_t len, cap;
};

static void collect(void *ctx, const char *line)
{
    struct log *l = ctx;
    size_t n = strlen(line);
    if (l->len + n + 2 > l->cap) {
        l->cap = (l->len + n + 2) * 2;
        l->text = realloc(l->text, l->cap);
        ck_assert_ptr_nonnull(l->text);
    }
    memcpy(l->text + l->len, line, n);
    l->len += n;
    l->text[l->len++] = '\n';
    l->text[l->len] = '\0';
}

static int run_check(vd_image *img, uint32_t flags, vd_check_result *res, struct log *l)
{
    free(l->text);
    *l = (struct log){ 0 };
    collect(l, "");
    *res = (vd_check_result)VD_CHECK_RESULT_INIT;
    return vd_check(img, flags, res, collect, l);
}

/* Only benign OFLAG_COPIED mismatches, and nothing else wrong? */
static bool only_benign_copied(const vd_check_result *res, const struct log *l, uint64_t cs)
{
    struct cu_verdict v;
    cu_classify(l->text, cs, &v);
    return !res->check_errors && v.errors && v.errors == v.copied_benign &&
           res->corruptions == v.copied_benign;
}

static const char *first_error(const struct log *l, uint64_t cs)
{
    static __thread char line[256];
    struct cu_verdict v;
    cu_classify(l->text, cs, &v);
    snprintf(line, sizeof line, "%s", v.first_other);
    return line;
}

/* REPAIR_ALL, then a clean check: the way out of a tolerated known problem. */
static bool repair_all_cleans(vd_image *img)
{
    vd_check_result res;
    struct log l = { 0 };
    bool clean = run_check(img, VD_CHECK_REPAIR_ALL, &res, &l) == 0 && !res.corruptions && !res.leaks &&
                 run_check(img, 0, &res, &l) == 0 && !res.corruptions && !res.leaks && !res.check_errors;
    free(l.text);
    return clean;
}

vd_image *cu_open_checked(const char *path, const char *fmt, uint32_t open_flags, char *why,
                          size_t whylen, struct cu_check *out)
{
    memset(out, 0, sizeof *out);
    vd_image *img = NULL;
    int rc = vd_open(&img, path, fmt, VD_OPEN_RDWR | open_flags);
    if (rc < 0) {
        snprintf(why, whylen, "open failed: %s: %s", vd_errname(rc), vd_errmsg());
        return NULL;
    }
    if (strcmp(fmt, "qcow2") != 0)
        return img;
    vd_info info = VD_INFO_INIT;
    vt_ok(vd_get_info(img, &info));
    uint64_t cs = info.cluster_size;
    vd_check_result res, fix, again;
    struct log l = { 0 }, lfix = { 0 }, lagain = { 0 };
    rc = run_check(img, 0, &res, &l);
    out->leaks = res.leaks;
    out->corruptions = res.corruptions;
    bool ok = false;
    if (rc == 0 && res.corruptions && only_benign_copied(&res, &l, cs) && !cu_strict() &&
        repair_all_cleans(img)) {
        out->known |= CU_KNOWN_COPIED_AFTER_CRASH;
        ok = true;
    } else if (rc < 0 || res.corruptions || res.check_errors) {
        snprintf(why, whylen, "vd_check: rc=%s corruptions=%llu leaks=%llu check_errors=%llu; %s%s",
                 vd_errname(rc), (unsigned long long)res.corruptions,
                 (unsigned long long)res.leaks, (unsigned long long)res.check_errors,
                 first_error(&l, cs), rc < 0 ? vd_errmsg() : "");
    } else if (!res.leaks) {
        ok = true;
    } else {
        rc = run_check(img, VD_CHECK_REPAIR_LEAKS, &fix, &lfix);
        int rc2 = rc < 0 ? rc : run_check(img, 0, &again, &lagain);
        if (rc < 0 || rc2 < 0 || fix.corruptions || fix.leaks || again.corruptions ||
                   again.leaks || again.check_errors) {
            snprintf(why, whylen, "after VD_CHECK_REPAIR_LEAKS: rc=%s/%s corruptions=%llu leaks=%llu, "
                     "recheck corruptions=%llu leaks=%llu; %s%s", vd_errname(rc), vd_errname(rc2),
                     (unsigned long long)fix.corruptions, (unsigned long long)fix.leaks,
                     (unsigned long long)again.corruptions, (unsigned long long)again.leaks,
                     rc2 == 0 ? first_error(&lagain, cs) : "", (rc < 0 || rc2 < 0) ? vd_errmsg() : "");
        } else {
            ok = true;
        }
    }
    free(l.text);
    free(lfix.text);
    free(lagain.text);
    if (!ok) {
        vd_close(img);
        return NULL;
    }
    return img;
}

void cu_drop_first_refblock(const char *path)
{
    uint8_t field[8], zero[8] = { 0 };
    vt_pread_file(path, 48, field, sizeof field); /* the refcount table offset */
    uint64_t rt_offset = 0;
    for (int i = 0; i < 8; i++)
        rt_offset = rt_offset << 8 | field[i];
    vt_pwrite_file(path, rt_offset, zero, sizeof zero);
}

void cu_leak_clusters(vd_image *img, uint64_t count)
{
    struct qcow2 *q = qcow2_of(img);
    uint64_t host;
    ck_assert_int_eq(qcow2_alloc_clusters(img, q, count, &host), 0);
    /* the file must cover them: a check compares no refcounts past its end */
    uint8_t *zeroes = calloc(1, (size_t)q->cluster_size);
    ck_assert_ptr_nonnull(zeroes);
    vt_ok(vd_file_pwrite(img->file, zeroes, (size_t)q->cluster_size, host + (count - 1) * q->cluster_size));
    free(zeroes);
    vt_ok(vd_flush(img, 0));
}

uint64_t cu_check_problems(const vd_check_result *res)
{
    return res->corruptions + res->leaks + res->check_errors;
}

void cu_copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    /* overwrite, then cut to size: O_TRUNC makes ext4 flush the file on close */
    int out = open(to, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ck_assert_msg(in >= 0 && out >= 0, "copying %s to %s: %s", from, to, strerror(errno));
    char buf[1 << 16];
    ssize_t n;
    off_t total = 0;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        ck_assert_msg(write(out, buf, (size_t)n) == n, "writing %s: %s", to, strerror(errno));
        total += n;
    }
    ck_assert_msg(n == 0 && ftruncate(out, total) == 0, "copying %s: %s", from, strerror(errno));
    close(in);
    close(out);
}

const char *cu_keep_dir(void)
{
    const char *d = getenv("VD_CRASH_KEEP");
    return d && *d ? d : "/tmp";
}
