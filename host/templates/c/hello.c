/* The tasks of {{name}}.wasm: every WASQ_TASK(NAME) is exported as `task.NAME`. */
#include "wasq_guest.h"

/* Room for the input; larger input is refused as bad_input. */
static char input[64 * 1024];
static char result[64 * 1024 + 32];

/* hello(name: string) -> "hello, NAME!" */
WASQ_TASK(hello) {
    int len = wasq_input(input, sizeof input);
    if (len < 0) {
        wasq_bad_input_str("task hello takes 1 argument (name) of at most 64 KiB");
        return;
    }
    int start, n;
    if (!wasq_string_arg(input, len, &start, &n)) {
        wasq_bad_input_str("task hello takes 1 argument (name), a string");
        return;
    }
    /* The name's JSON bytes, escapes and all, go into a new JSON string. */
    const char *prefix = "\"hello, ";
    int out = 0;
    for (int i = 0; prefix[i]; i++) result[out++] = prefix[i];
    for (int i = 0; i < n; i++) result[out++] = input[start + i];
    result[out++] = '!';
    result[out++] = '"';
    wasq_log_str(WASQ_INFO, "greeting someone");
    wasq_output(result, out);
}
