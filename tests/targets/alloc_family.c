/*
 * Ground truth for every allocation function leakhound hooks: one function per hooked call,
 * each computing from what it did how many bytes it leaves outstanding. Protocol: truth.h.
 *
 * Each leak_* function calls the allocator directly, because frame-pointer stacks of code built
 * without frame pointers keep only the direct caller (shared/TOOLCHAIN.md, "Stacks").
 */
#include "truth.h"

#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

/*
 * Impossible sizes live in a volatile so gcc cannot see them: it warns about calls whose size
 * it knows to exceed PTRDIFF_MAX and may assume they never happen.
 */
static volatile size_t huge = SIZE_MAX;
/* gcc rewrites a literal realloc(NULL, n) as malloc(n); a volatile NULL keeps the realloc. */
static void *volatile null_block;

static size_t page;

/*
 * Whether the allocator in use (the object that defines the malloc this program calls: glibc,
 * a preloaded jemalloc, or one linked into the executable) also defines `fn`. Allocators
 * leave some functions out (jemalloc 5.3 has no pvalloc); the program then gets glibc's, which
 * allocates from glibc's own heap, and handing that block to the other allocator's free would
 * crash it. Such a function is not called: its truth is then 0, and a note says so on stderr.
 */
static int allocator_has(void *fn, const char *name)
{
    Dl_info mine, theirs;
    if (!dladdr(fn, &mine) || !dladdr((void *)malloc, &theirs))
        truth_die("dladdr");
    if (mine.dli_fbase == theirs.dli_fbase)
        return 1;
    fprintf(stderr, "note: %s is not the allocator's (it is %s's, malloc is %s's); not called\n",
            name, mine.dli_fname, theirs.dli_fname);
    return 0;
}
#define HAS(fn) allocator_has((void *)fn, #fn)

TRUTH_FN size_t leak_malloc(void)
{
    enum { N = 100, SIZE = 64 };
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = malloc(SIZE);
        if (!truth_sink[first + i])
            truth_die("malloc");
        out += SIZE;
    }
    for (size_t i = 0; i < N; i += 4) {
        free(truth_sink[first + i]);
        truth_sink[first + i] = NULL;
        out -= SIZE;
    }
    /* A failed malloc returns NULL and must count nothing. */
    if (malloc(huge) != NULL)
        truth_die("malloc(SIZE_MAX)");
    /* A failed realloc returns NULL and leaves the old block allocated: it still counts. */
    if (realloc(truth_sink[first + 1], huge) != NULL)
        truth_die("realloc(p, SIZE_MAX)");
    return out;
}

TRUTH_FN size_t leak_calloc(void)
{
    enum { N = 50, COUNT = 10, SIZE = 48 };
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = calloc(COUNT, SIZE);
        if (!truth_sink[first + i])
            truth_die("calloc");
        out += COUNT * SIZE;
    }
    for (size_t i = 0; i < N; i += 5) {
        free(truth_sink[first + i]);
        out -= COUNT * SIZE;
    }
    /* count * size overflows: calloc fails and must count nothing. */
    if (calloc(huge / 2, 4) != NULL)
        truth_die("calloc(SIZE_MAX / 2, 4)");
    return out;
}

TRUTH_FN size_t leak_realloc_grow(void)
{
    enum { SPACERS = 16 };
    size_t slot = truth_slots(1);
    size_t spacers = truth_slots(SPACERS);
    size_t size = 16;
    truth_sink[slot] = malloc(size);
    if (!truth_sink[slot])
        truth_die("malloc");
    /*
     * Doubling up to 64 KiB (below the 128 KiB mmap threshold). A small block allocated after
     * each step sits behind the buffer, so some steps move it and some grow it in place.
     */
    for (size_t step = 0; size < 64 * 1024; step++) {
        size *= 2;
        void *grown = realloc(truth_sink[slot], size);
        if (!grown)
            truth_die("realloc grow");
        truth_sink[slot] = grown;
        if (step < SPACERS) {
            truth_sink[spacers + step] = malloc(16);
            if (!truth_sink[spacers + step])
                truth_die("malloc spacer");
        }
    }
    /* Shrinking keeps the block in place: the same pointer comes back with a new size. */
    size = 40000;
    void *shrunk = realloc(truth_sink[slot], size);
    if (!shrunk)
        truth_die("realloc shrink");
    truth_sink[slot] = shrunk;
    for (size_t i = 0; i < SPACERS; i++) {
        free(truth_sink[spacers + i]);
        truth_sink[spacers + i] = NULL;
    }
    /* realloc(NULL, n) is malloc(n). */
    enum { FRESH = 1000 };
    size_t fresh = truth_slots(1);
    truth_sink[fresh] = realloc(null_block, FRESH);
    if (!truth_sink[fresh])
        truth_die("realloc(NULL, n)");
    return size + FRESH;
}

TRUTH_FN size_t leak_reallocarray(void)
{
    size_t a = truth_slots(1);
    size_t b = truth_slots(1);
    truth_sink[a] = reallocarray(NULL, 10, 100);
    if (!truth_sink[a])
        truth_die("reallocarray(NULL, ...)");
    void *grown = reallocarray(truth_sink[a], 30, 100);
    if (!grown)
        truth_die("reallocarray grow");
    truth_sink[a] = grown;
    /* nmemb * size overflows: it fails with ENOMEM and the block keeps its 3000 bytes. */
    if (reallocarray(truth_sink[a], huge, 2) != NULL)
        truth_die("reallocarray overflow");
    truth_sink[b] = reallocarray(NULL, 7, 64);
    if (!truth_sink[b])
        truth_die("reallocarray(NULL, 7, 64)");
    return 30 * 100 + 7 * 64;
}

TRUTH_FN size_t leak_posix_memalign(void)
{
    if (!HAS(posix_memalign))
        return 0;
    enum { N = 10, SIZE = 1000 };
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, SIZE) != 0)
            truth_die("posix_memalign");
        truth_sink[first + i] = p;
        out += SIZE;
    }
    for (size_t i = 0; i < 2; i++) {
        free(truth_sink[first + i]);
        out -= SIZE;
    }
    /* An alignment that is not a power of two fails with EINVAL and allocates nothing. */
    void *none = NULL;
    if (posix_memalign(&none, 24, 100) != EINVAL || none != NULL)
        truth_die("posix_memalign(24)");
    return out;
}

TRUTH_FN size_t leak_aligned_alloc(void)
{
    if (!HAS(aligned_alloc))
        return 0;
    enum { N = 8, ALIGN = 256, SIZE = 4096 };
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = aligned_alloc(ALIGN, SIZE);
        if (!truth_sink[first + i])
            truth_die("aligned_alloc");
        out += SIZE;
    }
    for (size_t i = 0; i < 3; i++) {
        free(truth_sink[first + i]);
        out -= SIZE;
    }
    return out;
}

TRUTH_FN size_t leak_memalign(void)
{
    if (!HAS(memalign))
        return 0;
    enum { N = 5, ALIGN = 128, SIZE = 2000 };
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = memalign(ALIGN, SIZE);
        if (!truth_sink[first + i])
            truth_die("memalign");
        out += SIZE;
    }
    free(truth_sink[first]);
    out -= SIZE;
    return out;
}

TRUTH_FN size_t leak_valloc(void)
{
    if (!HAS(valloc))
        return 0;
    enum { N = 3 };
    size_t size = 2 * page;
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = valloc(size);
        if (!truth_sink[first + i])
            truth_die("valloc");
        out += size;
    }
    free(truth_sink[first]);
    out -= size;
    return out;
}

TRUTH_FN size_t leak_pvalloc(void)
{
    if (!HAS(pvalloc))
        return 0;
    enum { N = 2 };
    /* pvalloc rounds up to whole pages; a page multiple makes requested == allocated. */
    size_t size = 3 * page;
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = pvalloc(size);
        if (!truth_sink[first + i])
            truth_die("pvalloc");
        out += size;
    }
    return out;
}

TRUTH_FN size_t leak_big_malloc(void)
{
    enum { N = 4, SIZE = 1024 * 1024 };
    size_t out = 0;
    size_t first = truth_slots(N);
    /*
     * Above the 128 KiB mmap threshold glibc's malloc calls mmap itself; a tracer that hooks
     * both would count these twice. Freeing an mmapped chunk raises the threshold, so all four
     * are allocated before one is freed.
     */
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = malloc(SIZE);
        if (!truth_sink[first + i])
            truth_die("malloc 1 MiB");
        out += SIZE;
    }
    free(truth_sink[first + N - 1]);
    out -= SIZE;
    return out;
}

TRUTH_FN size_t leak_mmap(void)
{
    enum { N = 4 };
    const size_t region = 64 * 1024;
    const size_t tail = 16 * 1024;
    size_t out = 0;
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        void *p = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            truth_die("mmap");
        truth_sink[first + i] = p;
        out += region;
    }
    if (munmap(truth_sink[first], region) != 0)
        truth_die("munmap whole");
    out -= region;
    /* Unmapping the tail of a region shrinks it. */
    if (munmap((char *)truth_sink[first + 1] + region - tail, tail) != 0)
        truth_die("munmap tail");
    out -= tail;
    /* A failed mmap (no fd for a file mapping) must count nothing. */
    if (mmap(NULL, region, PROT_READ, MAP_PRIVATE, -1, 0) != MAP_FAILED)
        truth_die("mmap without fd");
    return out;
}

TRUTH_FN size_t leak_mremap(void)
{
    const size_t region = 64 * 1024;
    size_t out = 0;
    size_t first = truth_slots(2);
    void *a = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        truth_die("mmap a");
    /* Growing may move the mapping; either way 128 KiB stay mapped. */
    void *grown = mremap(a, region, 2 * region, MREMAP_MAYMOVE);
    if (grown == MAP_FAILED)
        truth_die("mremap grow");
    truth_sink[first] = grown;
    out += 2 * region;
    void *b = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED)
        truth_die("mmap b");
    void *shrunk = mremap(b, region, region / 2, 0);
    if (shrunk != b)
        truth_die("mremap shrink");
    truth_sink[first + 1] = shrunk;
    out += region / 2;
    return out;
}

TRUTH_FN size_t churn_all_freed(void)
{
    size_t s = truth_slots(1);
    void *p = NULL;

    truth_sink[s] = malloc(100);
    free(truth_sink[s]);
    truth_sink[s] = calloc(3, 50);
    free(truth_sink[s]);
    truth_sink[s] = malloc(64);
    p = realloc(truth_sink[s], 4096);
    if (!p)
        truth_die("realloc");
    truth_sink[s] = p;
    free(truth_sink[s]);
    /* glibc's realloc(p, 0) frees p and returns NULL. */
    truth_sink[s] = malloc(200);
    p = realloc(truth_sink[s], 0);
    truth_sink[s] = p;
    free(truth_sink[s]);
    truth_sink[s] = reallocarray(NULL, 4, 25);
    free(truth_sink[s]);
    if (HAS(posix_memalign)) {
        if (posix_memalign(&p, 32, 300) != 0)
            truth_die("posix_memalign");
        truth_sink[s] = p;
        free(truth_sink[s]);
    }
    if (HAS(aligned_alloc)) {
        truth_sink[s] = aligned_alloc(64, 640);
        free(truth_sink[s]);
    }
    if (HAS(memalign)) {
        truth_sink[s] = memalign(64, 100);
        free(truth_sink[s]);
    }
    if (HAS(valloc)) {
        truth_sink[s] = valloc(page);
        free(truth_sink[s]);
    }
    if (HAS(pvalloc)) {
        truth_sink[s] = pvalloc(page);
        free(truth_sink[s]);
    }
    truth_sink[s] = malloc(4 * 1024 * 1024);
    free(truth_sink[s]);
    free(NULL);
    p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        truth_die("mmap");
    truth_sink[s] = p;
    if (munmap(truth_sink[s], 8192) != 0)
        truth_die("munmap");
    truth_sink[s] = NULL;
    return 0;
}

enum { THREADS = 4, THREAD_BLOCKS = 64 };
static void *volatile thread_sink[THREADS][THREAD_BLOCKS];
static pthread_barrier_t thread_start;

/* Runs in its own thread; thread idx leaks (idx + 1) * 8 blocks of 256 + 16 * idx bytes. */
TRUTH_FN size_t leak_in_threads(size_t idx)
{
    size_t blocks = (idx + 1) * 8;
    size_t size = 256 + 16 * idx;
    size_t out = 0;
    for (size_t i = 0; i < blocks; i++) {
        thread_sink[idx][i] = malloc(size);
        if (!thread_sink[idx][i])
            truth_die("malloc in thread");
        out += size;
    }
    /* Every other block freed, from the thread that allocated it. */
    for (size_t i = 0; i < blocks; i += 2) {
        free(thread_sink[idx][i]);
        out -= size;
    }
    return out;
}

struct thread_job {
    size_t idx;
    size_t bytes;
};

static void *thread_entry(void *arg)
{
    struct thread_job *job = arg;
    /* All threads allocate at once, so the tracer's per-thread state is exercised. */
    pthread_barrier_wait(&thread_start);
    job->bytes = leak_in_threads(job->idx);
    return NULL;
}

/*
 * Deliberately not a known function: its pthread_create mmaps thread stacks that glibc keeps
 * cached after the threads end, so they stay outstanding but belong to no leak_* function.
 */
static size_t run_threads(void)
{
    pthread_t threads[THREADS];
    struct thread_job jobs[THREADS];
    size_t out = 0;
    if (pthread_barrier_init(&thread_start, NULL, THREADS) != 0)
        truth_die("pthread_barrier_init");
    for (size_t i = 0; i < THREADS; i++) {
        jobs[i].idx = i;
        jobs[i].bytes = 0;
        if (pthread_create(&threads[i], NULL, thread_entry, &jobs[i]) != 0)
            truth_die("pthread_create");
    }
    for (size_t i = 0; i < THREADS; i++) {
        if (pthread_join(threads[i], NULL) != 0)
            truth_die("pthread_join");
        out += jobs[i].bytes;
    }
    pthread_barrier_destroy(&thread_start);
    return out;
}

struct known {
    const char *name;
    size_t (*run)(void);
    size_t bytes;
};

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    page = (size_t)sysconf(_SC_PAGESIZE);
    struct known known[] = {
        {"leak_malloc", leak_malloc, 0},
        {"leak_calloc", leak_calloc, 0},
        {"leak_realloc_grow", leak_realloc_grow, 0},
        {"leak_reallocarray", leak_reallocarray, 0},
        {"leak_posix_memalign", leak_posix_memalign, 0},
        {"leak_aligned_alloc", leak_aligned_alloc, 0},
        {"leak_memalign", leak_memalign, 0},
        {"leak_valloc", leak_valloc, 0},
        {"leak_pvalloc", leak_pvalloc, 0},
        {"leak_big_malloc", leak_big_malloc, 0},
        {"leak_mmap", leak_mmap, 0},
        {"leak_mremap", leak_mremap, 0},
        {"churn_all_freed", churn_all_freed, 0},
        {"leak_in_threads", run_threads, 0},
    };
    size_t n = sizeof known / sizeof known[0];
    for (size_t i = 0; i < n; i++)
        known[i].bytes = known[i].run();
    for (size_t i = 0; i < n; i++)
        truth_report(known[i].name, known[i].bytes);
    return truth_finish(opts);
}
