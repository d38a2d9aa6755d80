/*
 * A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on machines without a GPU.
 *
 * It exports the C functions that nvidia-ml-py (pynvml) calls for what localaid uses, with the
 * driver's signatures and return codes, and answers from a JSON state file that tests rewrite
 * at run time: $FAKE_NVML_STATE, default /run/fake-nvml/state.json (the fake Ollama server reads
 * the same file to decide whether it "sees" a GPU). Every call re-reads the file. Keys (all
 * optional; only this flat shape is understood):
 *
 *   {"count": 1, "name": "NVIDIA GeForce RTX 4070", "uuid": "GPU-...", "driver": "550.54.14",
 *    "memory_total": 12884901888, "memory_used": 1073741824, "temperature": 45,
 *    "utilization": 3, "lost": false, "driver_loaded": true,
 *    "xids": [79], "xid_device": 0, "compute_pids": [1234], "compute_pids_file": "/path"}
 *
 * - No state file, or "driver_loaded": false: nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED.
 * - "lost": true: device queries and event registration fail with NVML_ERROR_GPU_IS_LOST (15).
 * - "xids" is the history of Xid errors; like the real library, an event set only receives
 *   the ones that happen after it was registered (appended later), each once.
 * - compute processes: "compute_pids" plus the PIDs listed in "compute_pids_file" (e.g. a
 *   cgroup.procs file), reported on device 0.
 *
 * Build: tests/fakes/nvml/build (gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define EVENT_XID 0x8ULL
#define EVENT_GPU_UNAVAILABLE 0x4000ULL
#define MAX_STATE 65536
#define MAX_LIST 256

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
    void *device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;
typedef struct { int registered; long delivered; unsigned long long types; } fake_set_t;

static int initialised;

/* ------------------------------------------------------------------ the state file */
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

static int lost(const char *s) { return num(s, "lost", 0) != 0; }

static int device_index(void *device, const char *s) {
    intptr_t i = (intptr_t)device - 1;
    if (i < 0 || i >= num(s, "count", 1)) return -1;
    return (int)i;
}

/* Common prologue of device queries: state read, handle valid, GPU not lost. */
#define DEVICE_CALL(dev)                                                        \
    if (!initialised) return NVML_ERROR_UNINITIALIZED;                          \
    char *s = read_state();                                                     \
    if (!s) return NVML_ERROR_DRIVER_NOT_LOADED;                                \
    int idx = device_index(dev, s);                                             \
    if (idx < 0) { free(s); return NVML_ERROR_INVALID_ARGUMENT; }               \
    if (lost(s)) { free(s); return NVML_ERROR_GPU_IS_LOST; }

/* ------------------------------------------------------------------ init */
int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    char *s = read_state();
    if (!s) return NVML_ERROR_DRIVER_NOT_LOADED;
    int loaded = num(s, "driver_loaded", 1) != 0;
    free(s);
    if (!loaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    initialised = 1;
    return NVML_SUCCESS;
}

int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlInit(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    char *s = read_state();
    if (!s) return NVML_ERROR_DRIVER_NOT_LOADED;
    str(s, "driver", "550.54.14", version, length);
    free(s);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ devices */
int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    char *s = read_state();
    if (!s) return NVML_ERROR_DRIVER_NOT_LOADED;
    *count = (unsigned int)num(s, "count", 1);
    free(s);
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    char *s = read_state();
    if (!s) return NVML_ERROR_DRIVER_NOT_LOADED;
    long long count = num(s, "count", 1);
    free(s);
    if (index >= count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (void *)(intptr_t)(index + 1);
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    DEVICE_CALL(device);
    str(s, "name", "NVIDIA GeForce RTX 4070", name, length);
    free(s);
    return NVML_SUCCESS;
}

int nvmlDeviceGetUUID(void *device, char *uuid, unsigned int length) {
    DEVICE_CALL(device);
    char base[80];
    str(s, "uuid", "GPU-00000000-fake-0000-0000-000000000000", base, sizeof base);
    if (idx == 0) snprintf(uuid, length, "%s", base);
    else snprintf(uuid, length, "%s-%d", base, idx);
    free(s);
    return NVML_SUCCESS;
}

int nvmlDeviceGetMemoryInfo(void *device, nvmlMemory_t *memory) {
    DEVICE_CALL(device);
    memory->total = (unsigned long long)num(s, "memory_total", 12884901888LL);
    memory->used = (unsigned long long)num(s, "memory_used", 0);
    memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    free(s);
    return NVML_SUCCESS;
}

int nvmlDeviceGetMemoryInfo_v2(void *device, nvmlMemory_v2_t *memory) {
    nvmlMemory_t m;
    int r = nvmlDeviceGetMemoryInfo(device, &m);
    if (r != NVML_SUCCESS) return r;
    memory->total = m.total;
    memory->reserved = 0;
    memory->free = m.free;
    memory->used = m.used;
    return NVML_SUCCESS;
}

int nvmlDeviceGetTemperature(void *device, int sensor, unsigned int *temp) {
    (void)sensor;
    DEVICE_CALL(device);
    *temp = (unsigned int)num(s, "temperature", 40);
    free(s);
    return NVML_SUCCESS;
}

int nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *util) {
    DEVICE_CALL(device);
    util->gpu = (unsigned int)num(s, "utilization", 0);
    util->memory = util->gpu;
    free(s);
    return NVML_SUCCESS;
}

static int compute_pids(const char *s, long long *pids, int max) {
    int n = list(find(s, "compute_pids"), pids, max, 0);
    char path[512];
    str(s, "compute_pids_file", "", path, sizeof path);
    if (*path) {
        FILE *f = fopen(path, "r");
        if (f) {
            char text[8192] = {0};
            fread(text, 1, sizeof text - 1, f);
            fclose(f);
            n += list(text, pids + n, max - n, 1);
        }
    }
    return n;
}

static int running_processes(void *device, unsigned int *count, nvmlProcessInfo_t *infos) {
    DEVICE_CALL(device);
    long long pids[MAX_LIST];
    int n = idx == 0 ? compute_pids(s, pids, MAX_LIST) : 0;
    free(s);
    if (n == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (infos == NULL || *count < (unsigned int)n) {
        *count = (unsigned int)n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (int i = 0; i < n; i++) {
        infos[i].pid = (unsigned int)pids[i];
        infos[i].usedGpuMemory = 512ULL << 20;
        infos[i].gpuInstanceId = 0xFFFFFFFFu;
        infos[i].computeInstanceId = 0xFFFFFFFFu;
    }
    *count = (unsigned int)n;
    return NVML_SUCCESS;
}

int nvmlDeviceGetComputeRunningProcesses_v3(void *device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(device, count, infos);
}

int nvmlDeviceGetComputeRunningProcesses_v2(void *device, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(device, count, infos);
}

/* ------------------------------------------------------------------ events */
int nvmlEventSetCreate(void **set) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    fake_set_t *fs = calloc(1, sizeof *fs);
    if (!fs) return NVML_ERROR_UNKNOWN;
    *set = fs;
    return NVML_SUCCESS;
}

int nvmlDeviceGetSupportedEventTypes(void *device, unsigned long long *types) {
    DEVICE_CALL(device);
    free(s);
    *types = EVENT_XID | EVENT_GPU_UNAVAILABLE;
    return NVML_SUCCESS;
}

int nvmlDeviceRegisterEvents(void *device, unsigned long long types, void *set) {
    DEVICE_CALL(device);
    fake_set_t *fs = set;
    if (!fs) { free(s); return NVML_ERROR_INVALID_ARGUMENT; }
    if (types & ~(EVENT_XID | EVENT_GPU_UNAVAILABLE)) { free(s); return NVML_ERROR_NOT_SUPPORTED; }
    if (!fs->registered) {
        long long xids[MAX_LIST];
        fs->delivered = list(find(s, "xids"), xids, MAX_LIST, 0);  /* only later events */
        fs->registered = 1;
    }
    fs->types |= types;
    free(s);
    return NVML_SUCCESS;
}

int nvmlEventSetWait_v2(void *set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    fake_set_t *fs = set;
    if (!fs || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec step = {0, 20 * 1000 * 1000};
    long waited = 0;
    for (;;) {
        char *s = read_state();
        if (s) {
            long long xids[MAX_LIST];
            int n = list(find(s, "xids"), xids, MAX_LIST, 0);
            if (n < fs->delivered) fs->delivered = n;  /* the test started a new history */
            if ((fs->types & EVENT_XID) && n > fs->delivered) {
                memset(data, 0, sizeof *data);
                data->device = (void *)(intptr_t)(num(s, "xid_device", 0) + 1);
                data->eventType = EVENT_XID;
                data->eventData = (unsigned long long)xids[fs->delivered++];
                data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFFu;
                free(s);
                return NVML_SUCCESS;
            }
            free(s);
        }
        if (waited >= (long)timeoutms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
        waited += 20;
    }
}

int nvmlEventSetFree(void *set) {
    free(set);
    return NVML_SUCCESS;
}
