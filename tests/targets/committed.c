/*
 * Memory committed inside PROT_NONE reservations, as V8 commits its heap: address space is
 * reserved with mmap(PROT_NONE) and pages are opened with mprotect(PROT_READ|PROT_WRITE).
 * Each function's truth is the bytes it opened that are still open at the end.
 *
 * One reservation is made before "ready", so an attached tracer must learn it from
 * /proc/PID/maps; the others are made while traced.
 */
#include <sys/mman.h>
#include <sys/syscall.h>

#include "truth.h"

#define MIB (1024 * 1024)

static char *early;  /* 64 MiB reserved before the trace */

static char *reserve(size_t len)
{
    void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        truth_die("mmap PROT_NONE");
    return p;
}

static void touch(char *p, size_t len)
{
    for (size_t i = 0; i < len; i += 4096)
        p[i] = 1;
}

/* 16 commits of 1 MiB in the early reservation: 16 MiB. */
TRUTH_FN size_t commit_heap(void)
{
    for (int i = 0; i < 16; i++) {
        if (mprotect(early + (size_t)i * MIB, MIB, PROT_READ | PROT_WRITE) != 0)
            truth_die("mprotect");
        touch(early + (size_t)i * MIB, MIB);
    }
    return 16 * MIB;
}

/* Opens the last MiB of commit_heap's pages again and one new MiB: only the new one counts. */
TRUTH_FN size_t commit_overlap(void)
{
    if (mprotect(early + 15 * MIB, 2 * MIB, PROT_READ | PROT_WRITE) != 0)
        truth_die("mprotect overlap");
    touch(early + 16 * MIB, MIB);
    return MIB;
}

/*
 * The raw syscall, as a runtime without libc makes it (Go's runtime keeps frame pointers and
 * makes the syscall in the function itself, so does this one): 2 MiB.
 */
__attribute__((noipa, optimize("no-omit-frame-pointer"))) size_t commit_raw(void)
{
    long rc;
    char *at = early + 32 * MIB;
    __asm__ volatile("syscall"
                     : "=a"(rc)
                     : "0"((long)SYS_mprotect), "D"(at), "S"((long)(2 * MIB)),
                       "d"((long)(PROT_READ | PROT_WRITE))
                     : "rcx", "r11", "memory");
    if (rc != 0)
        truth_die("raw mprotect");
    touch(at, 2 * MIB);
    return 2 * MIB;
}

/* Read-only pages hold nothing the program can fill: 0. */
TRUTH_FN size_t commit_read_only(void)
{
    if (mprotect(early + 40 * MIB, MIB, PROT_READ) != 0)
        truth_die("mprotect read-only");
    return 0;
}

/* Reserved while traced; opens 8 MiB and closes 5 MiB of it again: 3 MiB. */
TRUTH_FN size_t commit_then_close(void)
{
    char *p = reserve(16 * MIB);
    if (mprotect(p, 8 * MIB, PROT_READ | PROT_WRITE) != 0)
        truth_die("mprotect open");
    touch(p, 8 * MIB);
    if (mprotect(p + 3 * MIB, 5 * MIB, PROT_NONE) != 0)
        truth_die("mprotect close");
    return 3 * MIB;
}

/* Opens 4 MiB and unmaps 3 MiB of the reservation, across the open pages: 1 MiB. */
TRUTH_FN size_t commit_then_unmap(void)
{
    char *p = reserve(8 * MIB);
    if (mprotect(p, 4 * MIB, PROT_READ | PROT_WRITE) != 0)
        truth_die("mprotect open");
    touch(p, 4 * MIB);
    if (munmap(p + MIB, 7 * MIB) != 0)
        truth_die("munmap");
    return MIB;
}

/* Opens 2 MiB and then replaces them with a fresh PROT_NONE mapping (V8's decommit): 0. */
TRUTH_FN size_t commit_then_decommit(void)
{
    char *p = reserve(4 * MIB);
    if (mprotect(p, 2 * MIB, PROT_READ | PROT_WRITE) != 0)
        truth_die("mprotect open");
    touch(p, 2 * MIB);
    if (mmap(p, 2 * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) != p)
        truth_die("mmap fixed");
    return 0;
}

int main(int argc, char **argv)
{
    (void)truth_slots; /* truth.h helper this target has no use for */
    early = reserve(64 * MIB);
    struct truth_opts opts = truth_start(argc, argv);
    struct {
        const char *name;
        size_t (*fn)(void);
        size_t bytes;
    } paths[] = {
        {"commit_heap", commit_heap, 0},
        {"commit_overlap", commit_overlap, 0},
        {"commit_raw", commit_raw, 0},
        {"commit_read_only", commit_read_only, 0},
        {"commit_then_close", commit_then_close, 0},
        {"commit_then_unmap", commit_then_unmap, 0},
        {"commit_then_decommit", commit_then_decommit, 0},
    };
    size_t n = sizeof paths / sizeof paths[0];
    for (size_t i = 0; i < n; i++)
        paths[i].bytes = paths[i].fn();
    for (size_t i = 0; i < n; i++)
        truth_report(paths[i].name, paths[i].bytes);
    return truth_finish(opts);
}
