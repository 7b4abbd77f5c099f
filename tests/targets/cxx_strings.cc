/*
 * Allocations that reach malloc through Debian's libstdc++ (operator new, std::string) and
 * glibc (strdup), neither of which keeps frame pointers, from code built -O2 without them.
 * The application's call chain must still appear above operator new and strdup.
 */
#include <string>

#include "truth.h"

static volatile int after_call;
static size_t string_bytes;
static size_t header_bytes;

TRUTH_FN static void store_name(int i)
{
    size_t slot = truth_slots(1);
    auto *name = new std::string(std::string("a user name long enough for the heap, number ") +
                                 std::to_string(i));
    truth_sink[slot] = name;
    /* The object itself, and its buffer (capacity plus the terminating NUL). */
    string_bytes += sizeof(std::string) + name->capacity() + 1;
}

TRUTH_FN static void register_user(int i)
{
    store_name(i);
    after_call++;
}

TRUTH_FN static void copy_header(const char *header)
{
    size_t slot = truth_slots(1);
    char *copy = strdup(header);
    if (!copy)
        truth_die("strdup");
    truth_sink[slot] = copy;
    header_bytes += strlen(header) + 1;
}

TRUTH_FN static void parse_request(int)
{
    copy_header("content-type: application/json; charset=utf-8");
    after_call++;
}

int main(int argc, char **argv)
{
    struct truth_opts opts = truth_start(argc, argv);
    for (int i = 0; i < 1000; i++) {
        register_user(i);
        parse_request(i);
    }
    truth_report("main;register_user;store_name", string_bytes);
    truth_report("main;parse_request;copy_header", header_bytes);
    return truth_finish(opts);
}
