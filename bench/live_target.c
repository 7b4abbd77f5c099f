// The report-cost target for `cargo xtask bench`: one million live blocks across 10,000
// distinct stacks, built with frame pointers so the kernel's walker sees every frame.
//
// 100 leaf functions, each reached through 1..100 levels of recursion, make 100 x 100
// distinct stacks; each leaf call allocates BLOCKS_PER_STACK blocks and keeps them all.
//
// Handshake: prints "ready PID", waits for a line on stdin, allocates, prints "done", then
// waits for stdin to close so the blocks stay live while the tracer reports.
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define LEAVES 100
#define MAX_DEPTH 100
#define BLOCKS_PER_STACK 100

static void **blocks;
static long next_block;

#define LEAF(n)                                                                                \
    __attribute__((noinline)) static void leaf_##n(void) {                                     \
        for (int i = 0; i < BLOCKS_PER_STACK; i++) blocks[next_block++] = malloc(16 + n % 7 * 8); \
        __asm__ volatile("" ::: "memory");                                                     \
    }
#define LEAF10(t) LEAF(t##0) LEAF(t##1) LEAF(t##2) LEAF(t##3) LEAF(t##4) LEAF(t##5) LEAF(t##6) LEAF(t##7) LEAF(t##8) LEAF(t##9)
LEAF(0) LEAF(1) LEAF(2) LEAF(3) LEAF(4) LEAF(5) LEAF(6) LEAF(7) LEAF(8) LEAF(9)
LEAF10(1) LEAF10(2) LEAF10(3) LEAF10(4) LEAF10(5) LEAF10(6) LEAF10(7) LEAF10(8) LEAF10(9)

#define REF(n) leaf_##n,
#define REF10(t) REF(t##0) REF(t##1) REF(t##2) REF(t##3) REF(t##4) REF(t##5) REF(t##6) REF(t##7) REF(t##8) REF(t##9)
static void (*const leaves[LEAVES])(void) = {
    REF(0) REF(1) REF(2) REF(3) REF(4) REF(5) REF(6) REF(7) REF(8) REF(9)
    REF10(1) REF10(2) REF10(3) REF10(4) REF10(5) REF10(6) REF10(7) REF10(8) REF10(9)
};

// Not a tail call: the frame stays on the stack while the leaf allocates.
__attribute__((noinline)) static void descend(int depth, void (*leaf)(void)) {
    if (depth > 1)
        descend(depth - 1, leaf);
    else
        leaf();
    __asm__ volatile("" ::: "memory");
}

int main(void) {
    blocks = calloc((size_t)LEAVES * MAX_DEPTH * BLOCKS_PER_STACK, sizeof *blocks);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    for (int depth = 1; depth <= MAX_DEPTH; depth++)
        for (int leaf = 0; leaf < LEAVES; leaf++) descend(depth, leaves[leaf]);
    printf("done %ld\n", next_block);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
