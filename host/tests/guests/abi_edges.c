/* The ABI's edge cases (docs/abi.md), one task each, written against
 * guest-sdk/c/wasq_guest.h; abi_edges.wat has the same tasks in WAT.
 * host/tests/abi.rs builds this with clang and runs both. */
#include "wasq_guest.h"

/* stdout, straight from WASI (no libc here). */
typedef struct {
    const void *buf;
    unsigned long len;
} ciovec;
__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_write"))) int
fd_write(int fd, const ciovec *iovs, int n, unsigned long *written);

static const char bad_utf8[] = {'\xff', ' ', 'o', 'k', ' ', '\xc3'};

/* Counts constructor runs: WASQ_REACTOR's _initialize runs them once. */
static int ctor_runs;
__attribute__((constructor)) static void count_ctor(void) { ctor_runs++; }
WASQ_REACTOR

WASQ_TASK(bad_input) { wasq_bad_input_str("name must not be empty"); }

WASQ_TASK(not_json) { wasq_output_str("hello"); }

WASQ_TASK(output_then_fail) {
    wasq_output_str("1");
    wasq_fail_str("failed after output");
}

WASQ_TASK(fail_then_output) {
    wasq_fail_str("failed before output");
    wasq_output_str("1");
}

WASQ_TASK(fail_then_bad_input) {
    wasq_fail_str("first");
    wasq_bad_input_str("last");
}

WASQ_TASK(log_levels) {
    static const int levels[] = {-5, 0, 2, 4, 9, -2147483647 - 1, 2147483647};
    for (unsigned i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        wasq_log(levels[i], "x", 1);
    }
}

WASQ_TASK(bad_utf8_fail) { wasq_fail(bad_utf8, sizeof bad_utf8); }

WASQ_TASK(bad_utf8_log) { wasq_log(WASQ_INFO, bad_utf8, sizeof bad_utf8); }

WASQ_TASK(bad_utf8_stdout) {
    ciovec iov = {bad_utf8, sizeof bad_utf8};
    unsigned long written;
    fd_write(1, &iov, 1, &written);
}

WASQ_TASK(initialized) {
    char digit[1] = {(char)('0' + ctor_runs)};
    wasq_output(digit, 1);
}
