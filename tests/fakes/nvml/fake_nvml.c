/*
 * A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for tests on machines without a GPU: the
 * C functions nvidia-ml-py (pynvml) calls for localaid, with the driver's signatures and return
 * codes, answering from a JSON state file tests rewrite at run time ($FAKE_NVML_STATE, default
 * /run/fake-nvml/state.json; the fake Ollama reads it too: whether it "sees" a GPU, how much
 * memory it may take, where to say what it holds). Every call re-reads it. Keys (all optional,
 * flat): {"count": 1, "name": "NVIDIA GeForce RTX 4070", "uuid": "GPU-...", "driver": "550.54.14",
 * "memory_total": 12884901888, "memory_used": 1073741824, "temperature": 45, "utilization": 3,
 * "lost": false, "lost_xid": 79, "driver_loaded": true, "init_error": 0, "xids": [79],
 * "xid_device": 0, "compute_pids": [1234], "processes_file": "/path"}
 *
 * - As the real library, it reaches the driver through the device nodes ($FAKE_NVML_DEV, default
 *   /dev): nvmlInit opens nvidiactl, a device handle nvidia<index>. A failed open gives what the
 *   driver's library reports: ENOENT DRIVER_NOT_LOADED; EACCES (file permissions) NO_PERMISSION,
 *   "Insufficient Permissions"; EPERM (a device cgroup/BPF policy: DevicePolicy=, a container)
 *   UNKNOWN, "Unknown Error" (nvidia-smi in containers whose device access a `systemctl
 *   daemon-reload` took away). ENXIO/ENODEV count as success: the test containers' nodes are
 *   mknod'ed with no driver behind them, so reaching the absent driver is all a double can prove.
 * - No state file, or "driver_loaded": false: DRIVER_NOT_LOADED. "init_error": N: nvmlInit fails
 *   with N once the nodes opened (e.g. 999, UNKNOWN).
 * - "lost": true, a GPU fallen off the bus: handles and device queries fail with GPU_IS_LOST
 *   (nvidia-smi: "Unable to determine the device handle ...: GPU is lost"), and each event set
 *   registered before it delivers the loss once: an Xid event "lost_xid" (default 79) or, for a
 *   set registered only for GPU-unavailable events (or with "lost_xid": 0), one of those.
 * - "xids": the history of Xid errors; as the real library, an event set only receives the ones
 *   appended after it was registered, each once.
 * - Device 0's memory and compute processes move with what runs on it: "processes_file" holds a
 *   "PID BYTES" line per process with GPU memory (the fake Ollama writes its runner's); lines of
 *   processes that are gone are ignored (the driver freed their memory). Used = "memory_used"
 *   (the rest of the card) + those bytes; processes = "compute_pids" (512 MiB each) + those.
 *
 * - The WSL2 build (-DFAKE_NVML_WSL: tests/fakes/nvml/build OUTDIR --wsl) is WSL's library, installed
 *   under /usr/lib/wsl/lib: it reaches the GPU through /dev/dxg (nvmlInit opens "dxg" where the
 *   Linux one opens nvidiactl; no per-GPU node), and supports only part of the API, as WSL's
 *   does: no events (nvmlEventSetCreate and nvmlDeviceRegisterEvents: NOT_SUPPORTED, no event
 *   types), and utilisation and compute processes only with a Windows driver new enough
 *   ("wsl_new_driver": true; else they fail with "wsl_unsupported", default 3 NOT_SUPPORTED, 999
 *   UNKNOWN as some drivers answer).
 *
 * Build: tests/fakes/nvml/build (gcc -shared -fPIC -Wl,-soname,libnvidia-ml.so.1).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "state.h"

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define EVENT_XID 0x8ULL
#define EVENT_GPU_UNAVAILABLE 0x4000ULL

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
typedef struct { int registered, lost_delivered; long delivered; unsigned long long types; } fake_set_t;

static int initialised;

#ifdef FAKE_NVML_WSL
#define CTL_NODE "dxg"
/* WSL's NVML: what an older Windows driver does not support (utilisation, compute processes). */
static int wsl_unsupported(const char *s) {
    return num(s, "wsl_new_driver", 0) ? NVML_SUCCESS : (int)num(s, "wsl_unsupported", NVML_ERROR_NOT_SUPPORTED);
}
#define WSL_LIMITED(s) do { int r_ = wsl_unsupported(s); if (r_ != NVML_SUCCESS) { free(s); return r_; } } while (0)
#else
#define CTL_NODE "nvidiactl"
#define WSL_LIMITED(s) do { } while (0)
#endif

static int lost(const char *s) { return num(s, "lost", 0) != 0; }

static int device_index(void *device, const char *s) {
    intptr_t i = (intptr_t)device - 1;
    if (i < 0 || i >= num(s, "count", 1)) return -1;
    return (int)i;
}

/* Open a device node as the driver's library does; the NVML code its failure means. */
static int open_node(const char *name) {
    const char *dir = getenv("FAKE_NVML_DEV");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/dev", name);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        close(fd);
        return NVML_SUCCESS;
    }
    switch (errno) {
    case ENXIO: case ENODEV: return NVML_SUCCESS;  /* reached the driver: see the header */
    case ENOENT: return NVML_ERROR_DRIVER_NOT_LOADED;
    case EACCES: return NVML_ERROR_NO_PERMISSION;
    default: return NVML_ERROR_UNKNOWN;            /* EPERM: a device cgroup said no */
    }
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
    int forced = (int)num(s, "init_error", 0);
    free(s);
    if (!loaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    int r = open_node(CTL_NODE);
    if (r != NVML_SUCCESS) return r;
    if (forced) return forced;
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
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
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
    int gone = lost(s);
    free(s);
    if (index >= count) return NVML_ERROR_INVALID_ARGUMENT;
    if (gone) return NVML_ERROR_GPU_IS_LOST;
#ifndef FAKE_NVML_WSL  /* under WSL /dev/dxg, opened at init, is the only node */
    char node[32];
    snprintf(node, sizeof node, "nvidia%u", index);
    int r = open_node(node);
    if (r != NVML_SUCCESS) return r == NVML_ERROR_DRIVER_NOT_LOADED ? NVML_ERROR_UNKNOWN : r;
#endif
    *device = (void *)(intptr_t)(index + 1);
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    DEVICE_CALL(device);
    str(s, "name", "NVIDIA GeForce RTX 4070", name, length);
    free(s);
    return NVML_SUCCESS;
}

/* "cc_major"/"cc_minor" (default 8.9, an RTX 40xx): what a driver-version table is read against */
int nvmlDeviceGetCudaComputeCapability(void *device, int *major, int *minor) {
    DEVICE_CALL(device);
    *major = (int)num(s, "cc_major", 8);
    *minor = (int)num(s, "cc_minor", 9);
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
    if (idx == 0) {
        long long pids[MAX_LIST], bytes[MAX_LIST];
        int n = held(s, pids, bytes, MAX_LIST);
        for (int i = 0; i < n; i++) memory->used += (unsigned long long)bytes[i];
    }
    if (memory->used > memory->total) memory->used = memory->total;
    memory->free = memory->total - memory->used;
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
    WSL_LIMITED(s);
    util->gpu = (unsigned int)num(s, "utilization", 0);
    util->memory = util->gpu;
    free(s);
    return NVML_SUCCESS;
}

static int running_processes(void *device, unsigned int *count, nvmlProcessInfo_t *infos) {
    DEVICE_CALL(device);
    WSL_LIMITED(s);
    long long pids[MAX_LIST], bytes[MAX_LIST];
    int n = 0;
    if (idx == 0) {
        n = list(find(s, "compute_pids"), pids, MAX_LIST, 0);
        for (int i = 0; i < n; i++) bytes[i] = 512LL << 20;
        n += held(s, pids + n, bytes + n, MAX_LIST - n);
    }
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
        infos[i].usedGpuMemory = (unsigned long long)bytes[i];
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
#ifdef FAKE_NVML_WSL
    (void)set;
    return NVML_ERROR_NOT_SUPPORTED;
#endif
    fake_set_t *fs = calloc(1, sizeof *fs);
    if (!fs) return NVML_ERROR_UNKNOWN;
    *set = fs;
    return NVML_SUCCESS;
}

int nvmlDeviceGetSupportedEventTypes(void *device, unsigned long long *types) {
    DEVICE_CALL(device);
    free(s);
#ifdef FAKE_NVML_WSL
    *types = 0;
#else
    *types = EVENT_XID | EVENT_GPU_UNAVAILABLE;
#endif
    return NVML_SUCCESS;
}

int nvmlDeviceRegisterEvents(void *device, unsigned long long types, void *set) {
    DEVICE_CALL(device);
#ifdef FAKE_NVML_WSL
    (void)types; (void)set;
    free(s);
    return NVML_ERROR_NOT_SUPPORTED;
#endif
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

/* The loss of the GPU as an event for `fs`, once per loss; 0 when there is none to deliver. */
static int lost_event(const char *s, fake_set_t *fs, nvmlEventData_t *data) {
    if (!lost(s)) {
        fs->lost_delivered = 0;  /* back: a later loss is a new one */
        return 0;
    }
    if (fs->lost_delivered || !fs->registered) return 0;
    long long xid = num(s, "lost_xid", 79);
    unsigned long long type = 0;
    if (xid && (fs->types & EVENT_XID)) type = EVENT_XID;
    else if (fs->types & EVENT_GPU_UNAVAILABLE) type = EVENT_GPU_UNAVAILABLE, xid = 0;
    fs->lost_delivered = 1;
    if (!type) return 0;
    memset(data, 0, sizeof *data);
    data->device = (void *)(intptr_t)(num(s, "xid_device", 0) + 1);
    data->eventType = type;
    data->eventData = (unsigned long long)xid;
    data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFFu;
    return 1;
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
            int got = lost_event(s, fs, data);
            free(s);
            if (got) return NVML_SUCCESS;
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
