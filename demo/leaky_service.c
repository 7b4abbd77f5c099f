/*
 * leaky_service: the bundled demo target for `cargo xtask demo`.
 *
 * A toy request loop with the shapes of memory that leakhound tells apart:
 *   - encode_frame() leaks a 256-byte buffer on its error path, once in every 8 requests
 *     (the buffer is allocated, then the "encoder" fails and the buffer is never released);
 *   - session_cache_put() keeps up to 512 sessions and then replaces old entries: it grows
 *     at first, then holds steady;
 *   - parse_headers() strdup()s header values and frees them at the end of the request;
 *   - arena_grow() maps 64 KiB anonymous chunks now and then and never unmaps them.
 * It runs until killed (leakhound stops it when tracing ends), or for argv[1] seconds.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CACHE_SLOTS 512

struct session {
    char id[48];
    char *payload;
};

static struct session *cache[CACHE_SLOTS];
static void *volatile leaked_sink;

__attribute__((noinline)) static int encode_frame(unsigned request) {
    char *frame = malloc(256);
    if (!frame) return -1;
    memset(frame, 0, 256);
    if (request % 8 == 0) {
        /* The error path returns without releasing the frame. */
        leaked_sink = frame;
        return -1;
    }
    free(frame);
    return 0;
}

__attribute__((noinline)) static void session_cache_put(unsigned request) {
    unsigned slot = request % CACHE_SLOTS;
    if (cache[slot]) {
        free(cache[slot]->payload);
        free(cache[slot]);
    }
    struct session *s = calloc(1, sizeof *s);
    snprintf(s->id, sizeof s->id, "session-%u", request);
    s->payload = malloc(1024);
    cache[slot] = s;
}

__attribute__((noinline)) static void parse_headers(unsigned request) {
    char value[64];
    char *headers[4];
    for (int i = 0; i < 4; i++) {
        snprintf(value, sizeof value, "header-%d-of-request-%u", i, request);
        headers[i] = strdup(value);
    }
    for (int i = 0; i < 4; i++) free(headers[i]);
}

__attribute__((noinline)) static void arena_grow(unsigned request) {
    if (request % 200 == 0) {
        leaked_sink = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
}

__attribute__((noinline)) static void handle_request(unsigned request) {
    parse_headers(request);
    session_cache_put(request);
    encode_frame(request);
    arena_grow(request);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    printf("leaky_service: pid %d serving\n", getpid());
    fflush(stdout);
    for (unsigned request = 1;; request++) {
        handle_request(request);
        if (request % 100 == 0) {
            usleep(10000); /* about 10,000 requests a second */
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (seconds > 0 && (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 > seconds) break;
        }
    }
    return 0;
}
