/*
 * A target whose code is named by hostile names: it copies a tiny stub into anonymous
 * executable memory, names each copy in its own perf map (/tmp/perf-<pid>.map) with a name
 * that would break a terminal, an XML file or a folded stack if shown raw, and allocates
 * through the stubs. leakhound names anonymous executable memory from the perf map, so every
 * one of those names lands in an allocation stack.
 *
 * Truth: leak_hostile holds every block; decoy holds nothing. One perf-map name is
 * "evil;decoy": a `;` that split the frame would hand its bytes to decoy.
 */
#include "truth.h"

#include <sys/mman.h>

/* push %rbp; mov %rsp,%rbp; call *%rsi; pop %rbp; ret: void *stub(size_t n, malloc_fn f).
 * It keeps a frame pointer, which is how leakhound steps JIT code that has no CFI. */
static const unsigned char STUB[] = {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd6, 0x5d, 0xc3};
#define STUB_SPACING 64

typedef void *(*malloc_fn)(size_t);
typedef void *(*stub_fn)(size_t, malloc_fn);

static const char *const NAMES[] = {
    "\x1b]0;pwned\x07\x1b[2J\x1b[H",          /* set the title, clear the screen */
    "</text><script>alert(1)</script>",       /* markup */
    "a\"b'c&amp;d<e>f",                       /* XML metacharacters */
    "evil;decoy",                             /* a folded-stack separator */
    "ends in a count 4096",                   /* a folded-stack count */
    "ctl \x01\x02\x7f c1 \xc2\x9b[2J",        /* C0, DEL, and the C1 CSI in UTF-8 */
    "bad utf-8 \xff\xfe here",                /* not UTF-8 at all */
    "carriage\rreturn",                       /* CR inside a line */
    "noncharacter \xef\xbf\xbe",              /* U+FFFE: not an XML character */
    "JS:*\x1b[31mred /srv/\x1b[0m.js:1:2",    /* V8's form, escapes in the file */
    "void \x1b[2J.Evil.method(int)",          /* HotSpot's form */
    NULL,                                     /* the huge name, built at run time */
};
#define NAME_COUNT (sizeof NAMES / sizeof NAMES[0])
#define HUGE_NAME 2048
#define BLOCK 1000

static char perf_map[64];

static void remove_perf_map(void)
{
    unlink(perf_map);
}

TRUTH_FN static size_t leak_hostile(unsigned char *code)
{
    size_t held = 0;
    size_t slot = truth_slots(NAME_COUNT);
    for (size_t i = 0; i < NAME_COUNT; i++) {
        stub_fn stub = (stub_fn)(void *)(code + i * STUB_SPACING);
        size_t size = BLOCK + i;
        void *p = stub(size, malloc);
        if (!p)
            truth_die("malloc through a stub");
        truth_sink[slot + i] = p;
        held += size;
    }
    return held;
}

/* Named by a hostile name's tail; holds nothing. */
TRUTH_FN static void decoy(void)
{
    size_t slot = truth_slots(1);
    void *p = malloc(32);
    if (!p)
        truth_die("malloc");
    truth_sink[slot] = p;
    free(p);
    truth_sink[slot] = NULL;
}

int main(int argc, char **argv)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *code = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                               -1, 0);
    if (code == MAP_FAILED)
        truth_die("mmap");
    for (size_t i = 0; i < NAME_COUNT; i++)
        memcpy(code + i * STUB_SPACING, STUB, sizeof STUB);
    if (mprotect(code, page, PROT_READ | PROT_EXEC) != 0)
        truth_die("mprotect");

    snprintf(perf_map, sizeof perf_map, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(perf_map, "w");
    if (!map)
        truth_die("fopen perf map");
    atexit(remove_perf_map);
    for (size_t i = 0; i < NAME_COUNT; i++) {
        fprintf(map, "%lx %x ", (unsigned long)(code + i * STUB_SPACING), STUB_SPACING);
        if (NAMES[i]) {
            fputs(NAMES[i], map);
        } else {
            for (int j = 0; j < HUGE_NAME; j++)
                fputc('H', map);
        }
        fputc('\n', map);
    }
    if (fclose(map) != 0)
        truth_die("fclose perf map");

    struct truth_opts opts = truth_start(argc, argv);
    size_t held = leak_hostile(code);
    decoy();
    truth_report("leak_hostile", held);
    truth_report("decoy", 0);
    return truth_finish(opts);
}
