/* A tiny header-only test harness for the zcopy C tests.
 *
 * Each test is `static bool test_x(void)` and returns true when every check passed. `CHECK` and
 * `CHECK_STATUS` print where and why a check failed (with zcopy's last error message) and make the
 * test return false. `RUN_TESTS(table)` runs a table of tests in order, stops at the first failure,
 * prints `N passed, M failed` and returns the process exit code from `main`.
 *
 * C11, warning-free under -Wall -Wextra -Wpedantic -Werror. Everything here is `static inline` so a
 * program that does not use a helper gets no unused-function warning. */

#ifndef ZCOPY_TEST_HARNESS_H
#define ZCOPY_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "zcopy.h"

/* A key given as a string literal: its bytes and its length (no terminating NUL). */
#define K(lit) (lit), (sizeof(lit) - 1)
#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

/* Sentinels that no failing call may write over an out-parameter. */
#define BAD_BUF ((zc_buffer *)0x1)
#define BAD_POOL ((zc_pool *)0x1)

/* Test contents: byte i of a value made from `seed`, so a reader can check what it got. */
static inline uint8_t pattern_byte(uint32_t seed, size_t i) {
    return (uint8_t)(seed * 131u + (uint32_t)i * 7u + (uint32_t)(i >> 8) + 1u);
}

static inline void fill_pattern(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        p[i] = pattern_byte(seed, i);
    }
}

static inline bool has_pattern(const uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] != pattern_byte(seed, i)) {
            return false;
        }
    }
    return true;
}

/* Seconds one test may take before SIGALRM kills the whole program (a hang is a failure). */
#ifndef HARNESS_TEST_TIMEOUT_S
#define HARNESS_TEST_TIMEOUT_S 60
#endif

/* Fails the current test when `cond` is false. */
#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            printf("%s:%d: CHECK failed: %s\n    last error: %s\n", __FILE__, __LINE__, #cond,   \
                   harness_last_error());                                                        \
            fflush(stdout);                                                                      \
            return false;                                                                        \
        }                                                                                        \
    } while (0)

/* Evaluates `call` once and fails the current test unless it answered `expected`. */
#define CHECK_STATUS(call, expected)                                                             \
    do {                                                                                         \
        zc_status harness_got_ = (call);                                                         \
        zc_status harness_want_ = (expected);                                                    \
        if (harness_got_ != harness_want_) {                                                     \
            printf("%s:%d: %s\n    answered %u (%s), expected %u (%s)\n    last error: %s\n",    \
                   __FILE__, __LINE__, #call, (unsigned)harness_got_,                            \
                   harness_status_name(harness_got_), (unsigned)harness_want_,                   \
                   harness_status_name(harness_want_), harness_last_error());                    \
            fflush(stdout);                                                                      \
            return false;                                                                        \
        }                                                                                        \
    } while (0)

/* Shorthand for CHECK_STATUS(call, ZC_OK). */
#define CHECK_OK(call) CHECK_STATUS(call, ZC_OK)

typedef struct harness_test {
    const char *name;
    bool (*fn)(void);
} harness_test;

/* One table entry: `TEST(test_x)` gives {"test_x", test_x}. */
#define TEST(fn) { #fn, fn }

/* Runs every test of a `harness_test` array in order; use as the body of `main`. */
#define RUN_TESTS(table) return harness_run((table), sizeof(table) / sizeof((table)[0]))

static inline const char *harness_status_name(zc_status s) {
    const char *name = zc_status_str(s);
    return name != NULL ? name : "(NULL from zc_status_str)";
}

static inline const char *harness_last_error(void) {
    const char *msg = zc_last_error_message();
    return msg != NULL ? msg : "(NULL from zc_last_error_message)";
}

/* Runs the tests in order and stops at the first failure. Returns 0 if all passed, 1 otherwise. */
static inline int harness_run(const harness_test *tests, size_t n) {
    size_t passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < n; i++) {
        alarm(HARNESS_TEST_TIMEOUT_S);
        bool ok = tests[i].fn();
        alarm(0);
        printf("%s %s\n", ok ? "ok  " : "FAIL", tests[i].name);
        fflush(stdout);
        if (!ok) {
            failed++;
            break;
        }
        passed++;
    }
    printf("%zu passed, %zu failed\n", passed, failed);
    fflush(stdout);
    return failed == 0 ? 0 : 1;
}

/* Monotonic clock in nanoseconds, for timeouts and time limits. */
static inline uint64_t harness_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps `ms` milliseconds (resuming after signals). */
static inline void harness_sleep_ms(unsigned ms) {
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {
    }
}

#endif /* ZCOPY_TEST_HARNESS_H */
