/*
 * xts: the ceiling of issue 18's warm-cache LUKS read figure. Decrypts a
 * 64 MiB buffer with libgcrypt's aes-256-xts in 512-byte sectors, each with
 * its own plain64 tweak, as a LUKS qcow2 is decrypted, on THREADS threads
 * (each its own buffer and cipher handle), and prints the throughput in
 * bytes per second on one line: "xts <threads> <bytes/s>". A reader that
 * decrypts every byte it returns cannot be faster than this, however it
 * reads; bench_luks.sh sets it beside the plain reads.
 *
 * usage: bench_xts [THREADS]   (default 2)
 */
#include <gcrypt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUFFER (64u << 20)
#define SECTOR 512u
#define PASSES 4

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *decrypt_passes(void *arg)
{
    uint8_t *buf = arg;
    uint8_t key[64];
    memset(key, 0x5a, sizeof key);
    gcry_cipher_hd_t hd;
    if (gcry_cipher_open(&hd, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 0) ||
        gcry_cipher_setkey(hd, key, sizeof key))
        return (void *)1;
    void *failed = NULL;
    for (unsigned pass = 0; pass < PASSES && !failed; pass++)
        for (uint64_t s = 0; s < BUFFER / SECTOR && !failed; s++) {
            uint8_t iv[16] = { 0 };
            for (int i = 0; i < 8; i++) /* plain64: the sector number, little-endian */
                iv[i] = (uint8_t)(s >> (8 * i));
            if (gcry_cipher_setiv(hd, iv, sizeof iv) ||
                gcry_cipher_decrypt(hd, buf + s * SECTOR, SECTOR, NULL, 0))
                failed = (void *)1;
        }
    gcry_cipher_close(hd);
    return failed;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 64 || !gcry_check_version(NULL)) {
        fprintf(stderr, "usage: bench_xts [THREADS 1-64]\n");
        return 1;
    }
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    pthread_t tid[64];
    uint8_t *bufs[64];
    for (int t = 0; t < threads; t++) {
        if (!(bufs[t] = malloc(BUFFER)))
            return 1;
        memset(bufs[t], t + 1, BUFFER);
    }
    double start = now();
    for (int t = 0; t < threads; t++)
        if (pthread_create(&tid[t], NULL, decrypt_passes, bufs[t]))
            return 1;
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        void *res;
        pthread_join(tid[t], &res);
        failed |= res != NULL;
    }
    double seconds = now() - start;
    if (failed) {
        fprintf(stderr, "bench_xts: libgcrypt refused aes-256-xts\n");
        return 1;
    }
    printf("xts %d %.0f\n", threads, (double)threads * PASSES * BUFFER / seconds);
    for (int t = 0; t < threads; t++)
        free(bufs[t]);
    return 0;
}
