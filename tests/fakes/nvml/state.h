/*
 * The fake NVML's state file (see fake_nvml.c): reading it and the few values of its flat JSON.
 * Included once, by fake_nvml.c (static functions: one translation unit).
 */
#ifndef FAKE_NVML_STATE_H
#define FAKE_NVML_STATE_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STATE 65536
#define MAX_LIST 256

static char *read_state(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    if (!path || !*path) path = "/run/fake-nvml/state.json";
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = calloc(1, MAX_STATE + 1);
    if (buf) fread(buf, 1, MAX_STATE, f);
    fclose(f);
    return buf;
}

/* The value after "key": in a flat JSON object, or NULL. */
static const char *find(const char *s, const char *key) {
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = s ? strstr(s, pat) : NULL;
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static long long num(const char *s, const char *key, long long dflt) {
    const char *p = find(s, key);
    if (!p) return dflt;
    if (!strncmp(p, "true", 4)) return 1;
    if (!strncmp(p, "false", 5) || !strncmp(p, "null", 4)) return 0;
    char *end;
    long long v = strtoll(p, &end, 10);
    return end == p ? dflt : v;
}

static void str(const char *s, const char *key, const char *dflt, char *out, size_t n) {
    const char *p = find(s, key);
    size_t i = 0;
    if (p && *p == '"') {
        for (p++; *p && *p != '"' && i + 1 < n; p++) out[i++] = *p;
        out[i] = 0;
        return;
    }
    snprintf(out, n, "%s", dflt);
}

/* Integers of a JSON array, or of a whitespace-separated list when from_text. */
static int list(const char *p, long long *out, int max, int from_text) {
    int n = 0;
    if (!p) return 0;
    if (!from_text) {
        if (*p != '[') return 0;
        p++;
    }
    while (*p && n < max) {
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (!from_text && *p == ']') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        out[n++] = v;
        p = end;
    }
    return n;
}

/* The processes holding memory on device 0 ("processes_file": "PID BYTES" lines, live ones). */
static int held(const char *s, long long *pids, long long *bytes, int max) {
    char path[512];
    str(s, "processes_file", "", path, sizeof path);
    if (!*path) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char text[8192] = {0};
    fread(text, 1, sizeof text - 1, f);
    fclose(f);
    long long pairs[2 * MAX_LIST];
    int n = list(text, pairs, 2 * MAX_LIST, 1), out = 0;
    for (int i = 0; i + 1 < n && out < max; i += 2) {
        if (pairs[i] <= 0 || (kill((pid_t)pairs[i], 0) != 0 && errno != EPERM)) continue;  /* gone */
        pids[out] = pairs[i];
        bytes[out++] = pairs[i + 1];
    }
    return out;
}

#endif
