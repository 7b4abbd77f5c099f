// Loads the library named by argv[1] (a crafted libjvm.so), prints `ready <pid>` and waits for
// a line on stdin, so that a test can point leakhound at a process that maps it.

#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s LIBRARY\n", argv[0]);
        return 2;
    }
    void *library = dlopen(argv[1], RTLD_NOW);
    if (!library) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[16];
    (void)!fgets(line, sizeof line, stdin);
    return 0;
}
