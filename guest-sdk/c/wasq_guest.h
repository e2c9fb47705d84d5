/*
 * wasq_guest.h: write wasq tasks in C, against guest ABI v1 (docs/abi.md).
 *
 * One header, no libc needed. Build a task module with clang:
 *
 *     clang --target=wasm32 -O2 -mbulk-memory -nostdlib -Wl,--no-entry \
 *           -o tasks.wasm tasks.c
 *
 * (`-mbulk-memory` turns the copies the compiler writes as memcpy/memset
 * calls into wasm instructions, so nothing is left for a libc to provide.
 * wasm-ld exports the memory as `memory` by itself.)
 *
 *     #include "wasq_guest.h"
 *
 *     WASQ_TASK(answer) {            // exported as `task.answer`
 *         wasq_output_str("42");     // the result: one JSON value
 *     }
 *
 * A task reads its arguments (a JSON array, `["Ada"]`) with wasq_input,
 * sets its result with wasq_output (JSON bytes; a later call replaces them),
 * and fails with wasq_fail (kind `task_error`) or wasq_bad_input (kind
 * `bad_input`, the caller's mistake). A failure wins over any output, in
 * either order. Every pointer/length pair must lie inside the memory: one
 * that does not traps the guest.
 */
#ifndef WASQ_GUEST_H
#define WASQ_GUEST_H

#ifdef __cplusplus
extern "C" {
#endif

/* Exports the function that follows as task `name` (`task.name`, type
 * [] -> []). `name` must match [A-Za-z_][A-Za-z0-9_]*. The C function is
 * called wasq_task_<name>, so a task may share a name with a C function. */
#define WASQ_TASK(name) \
    __attribute__((export_name("task." #name))) void wasq_task_##name(void)

#define WASQ_IMPORT_(name) __attribute__((import_module("wasq"), import_name(#name)))

/* The raw imports of module `wasq`; see docs/abi.md for each. */

/* Length in bytes of the task's input, the JSON array of its arguments. */
WASQ_IMPORT_(input_len) int wasq_input_len(void);
/* Copies the whole input (wasq_input_len() bytes) to `ptr`. */
WASQ_IMPORT_(input_read) void wasq_input_read(void *ptr);
/* Sets the result: `len` bytes of one JSON value. A later call replaces it;
 * bytes that are not JSON fail the call as `task_error` when it returns. */
WASQ_IMPORT_(output) void wasq_output(const void *ptr, int len);
/* Fails the call with kind `task_error` and this UTF-8 message. */
WASQ_IMPORT_(fail) void wasq_fail(const char *msg, int len);
/* Fails the call with kind `bad_input` (the arguments do not fit). */
WASQ_IMPORT_(bad_input) void wasq_bad_input(const char *msg, int len);
/* One log line at `level` (WASQ_TRACE … WASQ_ERROR; others are clamped). */
WASQ_IMPORT_(log) void wasq_log(int level, const char *msg, int len);

#undef WASQ_IMPORT_

/* Log levels of wasq_log. */
enum { WASQ_TRACE = 0, WASQ_DEBUG = 1, WASQ_INFO = 2, WASQ_WARN = 3, WASQ_ERROR = 4 };

/* Runs static constructors (`__attribute__((constructor))`, C++ globals)
 * once per call, before the task: write `WASQ_REACTOR` once, at file scope,
 * in a module that has any. It exports `_initialize`, which hosts call
 * before the task. A module without constructors needs nothing. */
#define WASQ_REACTOR                                                        \
    extern void __wasm_call_ctors(void);                                    \
    __attribute__((export_name("_initialize"))) void _initialize(void) {   \
        __wasm_call_ctors();                                                \
    }

/* Length of a NUL-terminated string. */
static inline int wasq_strlen(const char *s) {
    int n = 0;
    while (s[n]) n++;
    return n;
}

/* wasq_output of a NUL-terminated string of JSON (`"\"hi\""`, `"[1, 2]"`). */
static inline void wasq_output_str(const char *json) { wasq_output(json, wasq_strlen(json)); }
/* wasq_fail with a NUL-terminated message. */
static inline void wasq_fail_str(const char *msg) { wasq_fail(msg, wasq_strlen(msg)); }
/* wasq_bad_input with a NUL-terminated message. */
static inline void wasq_bad_input_str(const char *msg) { wasq_bad_input(msg, wasq_strlen(msg)); }
/* wasq_log with a NUL-terminated message. */
static inline void wasq_log_str(int level, const char *msg) { wasq_log(level, msg, wasq_strlen(msg)); }

/* Reads the input into `buf`, which holds `cap` bytes. Returns its length,
 * or -1 (and reads nothing) when it does not fit. */
static inline int wasq_input(char *buf, int cap) {
    int len = wasq_input_len();
    if (len > cap) return -1;
    wasq_input_read(buf);
    return len;
}

/* Finds the only argument of input `in` (`len` bytes) when it is one JSON
 * string, as in `["Ada"]`: sets *start to its first byte after the opening
 * quote and *n to its length up to the closing quote, escapes left as they
 * are (so the bytes can be copied into another JSON string unchanged).
 * Returns 1 when the input is exactly one string argument, else 0. */
static inline int wasq_string_arg(const char *in, int len, int *start, int *n) {
    int i = 0;
#define WASQ_SKIP_WS_ \
    while (i < len && (in[i] == ' ' || in[i] == '\t' || in[i] == '\n' || in[i] == '\r')) i++
    WASQ_SKIP_WS_;
    if (i >= len || in[i++] != '[') return 0;
    WASQ_SKIP_WS_;
    if (i >= len || in[i++] != '"') return 0;
    int s = i;
    while (i < len && in[i] != '"') {
        if (in[i] == '\\') i++;
        i++;
    }
    if (i >= len) return 0;
    int e = i++;
    WASQ_SKIP_WS_;
    if (i >= len || in[i++] != ']') return 0;
    WASQ_SKIP_WS_;
#undef WASQ_SKIP_WS_
    if (i != len) return 0;
    *start = s;
    *n = e - s;
    return 1;
}

#ifdef __cplusplus
}
#endif

#endif /* WASQ_GUEST_H */
