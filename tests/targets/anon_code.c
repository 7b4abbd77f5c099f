/*
 * Allocations made from code in anonymous executable memory, as a JIT makes them, so that the
 * direct caller of malloc is named only by a perf map. The hostile-target tests plant perf
 * maps (symlinks out of the container, FIFOs, devices, huge or endless files) and check what
 * leakhound makes of them.
 *
 *   leak_via_anon_code  leaks 64 blocks of 4 KiB, each malloc called from a stub in an
 *                       anonymous PROT_EXEC mapping; the stub keeps a frame pointer, so the
 *                       walk goes on to leak_via_anon_code.
 *
 * Protocol: truth.h. Prints "stub <hex address> <size>" before "ready", for tests that
 * name the stub in a perf map of their own. Built with frame pointers.
 */
#include "truth.h"

#include <stdint.h>
#include <sys/mman.h>

enum { BLOCKS = 64, BLOCK_SIZE = 4096 };

typedef void *(*allocator_fn)(size_t);
typedef void *(*stub_fn)(size_t, allocator_fn);

/*
 * push %rbp; mov %rsp,%rbp; call *%rsi; pop %rbp; ret
 * The size stays in %rdi for the call; the return address lands inside the stub.
 */
static const unsigned char STUB[] = {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd6, 0x5d, 0xc3};

static stub_fn stub;

TRUTH_FN void leak_via_anon_code(size_t first)
{
    for (size_t i = 0; i < BLOCKS; i++) {
        void *block = stub(BLOCK_SIZE, malloc);
        if (!block)
            truth_die("malloc");
        truth_sink[first + i] = block;
    }
}

int main(int argc, char **argv)
{
    void *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED)
        truth_die("mmap");
    memcpy(code, STUB, sizeof STUB);
    if (mprotect(code, 4096, PROT_READ | PROT_EXEC) != 0)
        truth_die("mprotect");
    stub = (stub_fn)code;
    printf("stub %lx %zx\n", (unsigned long)(uintptr_t)code, sizeof STUB);

    struct truth_opts opts = truth_start(argc, argv);
    leak_via_anon_code(truth_slots(BLOCKS));
    truth_report("leak_via_anon_code", (size_t)BLOCKS * BLOCK_SIZE);
    return truth_finish(opts);
}
