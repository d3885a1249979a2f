/* Error codes, their names and descriptions, and the thread-local message. */
#include "common.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>

struct error_entry {
    int value;
    const char *name;
    const char *text;
};

#define ENTRY_(name, value, text) { VD_##name, "VD_" #name, text },
static const struct error_entry error_table[] = { VD_ERROR_TABLE(ENTRY_) };
#undef ENTRY_
#define N_ERRORS (sizeof error_table / sizeof error_table[0])

START_TEST(strerror_and_errname_match_the_table)
{
    for (size_t i = 0; i < N_ERRORS; i++) {
        const struct error_entry *e = &error_table[i];
        ck_assert_str_eq(vd_strerror(e->value), e->text);
        ck_assert_str_eq(vd_errname(e->value), e->name);
    }
}
END_TEST

START_TEST(table_values_are_distinct_and_non_positive)
{
    for (size_t i = 0; i < N_ERRORS; i++) {
        ck_assert_int_le(error_table[i].value, 0);
        for (size_t j = i + 1; j < N_ERRORS; j++)
            ck_assert_int_ne(error_table[i].value, error_table[j].value);
    }
    ck_assert_int_eq(VD_OK, 0);
    ck_assert_int_eq(VD_EINVAL, -1);
    ck_assert_int_eq(VD_EKEY, -18);
    ck_assert_int_eq(VD_ECANCELED, -19);
}
END_TEST

START_TEST(unknown_codes_are_named_vd_e_question_mark)
{
    static const int unknown[] = { 1, 2, 42, -20, -100, -1000, INT_MIN, INT_MAX };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        ck_assert_str_eq(vd_errname(unknown[i]), "VD_E?");
        const char *text = vd_strerror(unknown[i]);
        ck_assert_ptr_nonnull(text);
        ck_assert_int_gt((int)strlen(text), 0);
        for (size_t j = 0; j < N_ERRORS; j++)
            ck_assert_str_ne(text, error_table[j].text);
    }
}
END_TEST

/* Fail a vd_open on a missing file and return the message it left. */
static const char *fail_open(const char *path)
{
    vd_image *img = NULL;
    vt_err(vd_open(&img, path, NULL, 0), VD_ENOENT);
    ck_assert_ptr_null(img);
    return vd_errmsg();
}

START_TEST(failed_open_sets_a_message_naming_the_path)
{
    const char *path = vt_path("no-such-image.raw");
    const char *msg = fail_open(path);
    ck_assert_msg(strstr(msg, path) != NULL, "\"%s\" does not name %s", msg, path);
}
END_TEST

START_TEST(failed_open_of_a_directory_names_the_path)
{
    vd_image *img = NULL;
    int rc = vd_open(&img, vt_tmpdir(), "raw", 0);
    ck_assert_msg(rc < 0, "opening a directory returned %d", rc);
    vt_assert_errmsg_has(vt_tmpdir());
}
END_TEST

/*
 * Two threads take turns (barriers): A fails, then B checks it sees no message
 * and fails differently, then A checks its own message survived.
 */
struct two_threads {
    pthread_barrier_t barrier;
    const char *path_a, *path_b;
    char seen_by_b_first[1024];
    char seen_by_b_after[1024];
    char seen_by_a_after[1024];
};

static void *thread_b(void *arg)
{
    struct two_threads *t = arg;
    pthread_barrier_wait(&t->barrier); /* A has failed */
    snprintf(t->seen_by_b_first, sizeof t->seen_by_b_first, "%s", vd_errmsg());
    vd_image *img = NULL;
    vd_open(&img, t->path_b, NULL, 0);
    snprintf(t->seen_by_b_after, sizeof t->seen_by_b_after, "%s", vd_errmsg());
    pthread_barrier_wait(&t->barrier); /* B has failed */
    return NULL;
}

START_TEST(errmsg_is_thread_local)
{
    struct two_threads t = { .path_a = vt_path("missing-a.img"),
                             .path_b = vt_path("missing-b.img") };
    pthread_barrier_init(&t.barrier, NULL, 2);
    pthread_t b;
    ck_assert_int_eq(pthread_create(&b, NULL, thread_b, &t), 0);

    vd_image *img = NULL;
    int rc = vd_open(&img, t.path_a, NULL, 0);
    pthread_barrier_wait(&t.barrier);
    pthread_barrier_wait(&t.barrier);
    snprintf(t.seen_by_a_after, sizeof t.seen_by_a_after, "%s", vd_errmsg());
    pthread_join(b, NULL);
    pthread_barrier_destroy(&t.barrier);

    ck_assert_int_eq(rc, VD_ENOENT);
    ck_assert_msg(t.seen_by_b_first[0] == '\0',
                  "a fresh thread sees another thread's message \"%s\"", t.seen_by_b_first);
    ck_assert_msg(strstr(t.seen_by_b_after, t.path_b) != NULL,
                  "thread B's message \"%s\" does not name its own path", t.seen_by_b_after);
    ck_assert_msg(strstr(t.seen_by_a_after, t.path_a) != NULL,
                  "thread A's message \"%s\" does not name its own path", t.seen_by_a_after);
    ck_assert_msg(strstr(t.seen_by_a_after, t.path_b) == NULL,
                  "thread A sees thread B's message \"%s\"", t.seen_by_a_after);
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = vt_tcase(s, "errors");
    tcase_add_test(tc, strerror_and_errname_match_the_table);
    tcase_add_test(tc, table_values_are_distinct_and_non_positive);
    tcase_add_test(tc, unknown_codes_are_named_vd_e_question_mark);
    tcase_add_test(tc, failed_open_sets_a_message_naming_the_path);
    tcase_add_test(tc, failed_open_of_a_directory_names_the_path);
    tcase_add_test(tc, errmsg_is_thread_local);
    return s;
}

int main(void)
{
    return vt_run_suite(errors_suite());
}
