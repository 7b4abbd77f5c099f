/*
 * A process that pretends to be a JVM, the way a hostile process in a container can: it maps
 * an executable file named libjvm.so and catches SIGQUIT. It then plants one trap for the
 * attach handshake of a root tracer, allocates known bytes (protocol: truth.h), and when
 * released prints what it saw.
 *
 *   fake_jvm LIBJVM links HOST_FILE    .attach_pid<pid> in its cwd and /tmp -> HOST_FILE
 *   fake_jvm LIBJVM socket-link SOCKET /tmp/.java_pid<pid> -> SOCKET (a host socket)
 *   fake_jvm LIBJVM dribble            a socket of its own that accepts and sends a byte
 *                                      every 3 s, forever
 *   fake_jvm LIBJVM answer             a well-behaved listener: on SIGQUIT it checks the
 *                                      trigger file as HotSpot does, then answers "0"
 *   fake_jvm LIBJVM silent             on SIGQUIT it checks the trigger file, and never
 *                                      listens
 *
 * Lines it prints besides the truth: "sigquit N" and "served N" (requests answered), then
 * "trigger <where> <uid>" for every trigger it saw, and "left <name>" for every attach file
 * still in its cwd or /tmp that it did not make itself.
 */
#include "truth.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static volatile sig_atomic_t quits;
static volatile int served;
static char trigger_seen[256];
static char socket_path[64];

static void on_quit(int sig)
{
    (void)sig;
    quits++;
}

static void die(const char *what)
{
    fprintf(stderr, "fake_jvm: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Binds, listens, sets 0600 and renames into place, as HotSpot does. */
static int listen_at(const char *path)
{
    char partial[80];
    snprintf(partial, sizeof partial, "%s.tmp", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", partial);
    unlink(partial);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("bind");
    if (listen(fd, 5) != 0 || chmod(partial, 0600) != 0 || rename(partial, path) != 0)
        die("listen");
    return fd;
}

/* Reads a request: protocol version, command and three arguments, each ending in NUL. */
static void read_request(int conn)
{
    int nuls = 0;
    char c;
    while (nuls < 5 && read(conn, &c, 1) == 1)
        nuls += c == 0;
}

static void *dribble(void *arg)
{
    int fd = *(int *)arg;
    for (;;) {
        int conn = accept(fd, NULL, NULL);
        if (conn < 0)
            continue;
        read_request(conn);
        /* One byte every 3 s: each read of the peer returns in time, the reply never ends. */
        while (send(conn, "0", 1, MSG_NOSIGNAL) == 1)
            sleep(3);
        close(conn);
    }
    return NULL;
}

/* HotSpot's check: the trigger in the cwd, else in /tmp, owned by the effective uid or root. */
static int trigger_present(void)
{
    char name[64], in_tmp[80];
    struct stat st;
    snprintf(name, sizeof name, ".attach_pid%d", (int)getpid());
    snprintf(in_tmp, sizeof in_tmp, "/tmp/%s", name);
    const char *where = NULL;
    if (lstat(name, &st) == 0)
        where = "cwd";
    else if (lstat(in_tmp, &st) == 0)
        where = "tmp";
    if (!where)
        return 0;
    size_t used = strlen(trigger_seen);
    snprintf(trigger_seen + used, sizeof trigger_seen - used, "trigger %s %u%s\n", where,
             (unsigned)st.st_uid, S_ISREG(st.st_mode) ? "" : " not-a-file");
    return S_ISREG(st.st_mode) && (st.st_uid == geteuid() || st.st_uid == 0);
}

static void *answer(void *arg)
{
    int listens = arg != NULL;
    int fd = -1;
    sig_atomic_t handled = 0;
    for (;;) {
        if (fd < 0) {
            if (quits == handled) {
                usleep(2000);
                continue;
            }
            handled = quits;
            if (trigger_present() && listens)
                fd = listen_at(socket_path);
            continue;
        }
        int conn = accept(fd, NULL, NULL);
        if (conn < 0)
            continue;
        read_request(conn);
        if (write(conn, "0\n", 2) == 2)
            served++;
        close(conn);
    }
    return NULL;
}

/* Prints every attach file in dir that this process did not make itself. */
static void report_left(const char *dir, const char *mine)
{
    const char *names[] = {".attach_pid", ".java_pid"};
    for (size_t i = 0; i < 2; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s%d", dir, names[i], (int)getpid());
        struct stat st;
        if (lstat(path, &st) == 0 && strcmp(path, mine) != 0)
            printf("left %s\n", path);
    }
}

TRUTH_FN size_t leak_fake_jvm(void)
{
    enum { N = 64, SIZE = 4000 };
    size_t first = truth_slots(N);
    for (size_t i = 0; i < N; i++) {
        truth_sink[first + i] = malloc(SIZE);
        if (!truth_sink[first + i])
            truth_die("malloc");
    }
    return N * SIZE;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: fake_jvm LIBJVM MODE [PATH]\n");
        return 2;
    }
    const char *mode = argv[2];
    const char *path = argc > 3 ? argv[3] : "";

    int lib = open(argv[1], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (lib < 0 || fstat(lib, &st) != 0)
        die("libjvm.so");
    if (mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_EXEC, MAP_PRIVATE, lib, 0) == MAP_FAILED)
        die("mmap libjvm.so");
    close(lib);

    /* SA_RESTART, as HotSpot's handlers: a signal must not end the wait for "go" or release. */
    struct sigaction quit = {.sa_handler = on_quit, .sa_flags = SA_RESTART};
    sigemptyset(&quit.sa_mask);
    if (sigaction(SIGQUIT, &quit, NULL) != 0)
        die("sigaction");

    char cwd_trigger[64], tmp_trigger[80];
    snprintf(cwd_trigger, sizeof cwd_trigger, ".attach_pid%d", (int)getpid());
    snprintf(tmp_trigger, sizeof tmp_trigger, "/tmp/.attach_pid%d", (int)getpid());
    snprintf(socket_path, sizeof socket_path, "/tmp/.java_pid%d", (int)getpid());
    const char *mine = "";
    pthread_t thread;
    if (strcmp(mode, "links") == 0) {
        if (symlink(path, cwd_trigger) != 0 || symlink(path, tmp_trigger) != 0)
            die("symlink");
    } else if (strcmp(mode, "socket-link") == 0) {
        if (symlink(path, socket_path) != 0)
            die("symlink");
        mine = socket_path;
    } else if (strcmp(mode, "dribble") == 0) {
        static int fd;
        fd = listen_at(socket_path);
        mine = socket_path;
        if (pthread_create(&thread, NULL, dribble, &fd) != 0)
            die("pthread_create");
    } else if (strcmp(mode, "answer") == 0 || strcmp(mode, "silent") == 0) {
        static int listens = 1;
        if (pthread_create(&thread, NULL, answer, strcmp(mode, "answer") == 0 ? &listens : NULL) != 0)
            die("pthread_create");
        mine = socket_path;
    } else {
        fprintf(stderr, "fake_jvm: unknown mode %s\n", mode);
        return 2;
    }

    struct truth_opts opts = truth_start(argc, argv);
    truth_report("leak_fake_jvm", leak_fake_jvm());
    truth_finish(opts);
    printf("sigquit %d\nserved %d\n%s", (int)quits, served, trigger_seen);
    /* The planted links are the process's own; a trigger that is still there is not. */
    if (strcmp(mode, "links") != 0) {
        report_left(".", mine);
        report_left("/tmp", mine);
    }
    puts("end");
    fflush(stdout);
    return 0;
}
