/*
 * A fake libnvidia-ml.so.1 for tests: the unmodified pynvml bindings load it through
 * LD_LIBRARY_PATH and our probe runs for real, without a GPU or a driver.
 *
 * Build:  gcc -shared -fPIC -O1 -o libnvidia-ml.so.1 fake_nvml.c
 *
 * Environment:
 *   FAKE_NVML_RIG=FILE          the GPUs and host facts to report (format below)
 *   FAKE_NVML_INIT_ERROR=N      make nvmlInit fail with nvmlReturn_t N (9 driver not loaded,
 *                               18 driver/library mismatch, 4 no permission, ...)
 *   FAKE_NVML_LOG=FILE          append "init" / "shutdown" lines, so tests can see shutdown ran
 *
 * FILE is line based, one "key value..." per line; '#' lines and blank lines are ignored.
 * Host keys:  driver_version 550.120 | cuda_driver_version 12040 | nvml_version 12.550.120
 * "gpu N" starts the next GPU (NVML index = order in the file, N is for readers); then:
 *   uuid GPU-... | name rest of line | pci_bus_id 00000000:01:00.0
 *   memory TOTAL_BYTES USED_BYTES | compute_capability MAJOR MINOR
 *   power_constraints_mw MIN MAX | nvlink LINK PEER_PCI_BUS_ID
 *   architecture | pcie_gen_max | pcie_width_max | pcie_gen_current | pcie_width_current |
 *   power_limit_mw | power_default_mw | display_active | persistence_mode | mig_mode  (one uint)
 * A key that is absent makes its call return NVML_ERROR_NOT_SUPPORTED, as real NVML does for a
 * reading the device does not have. An unknown key makes nvmlInit fail: typos must not pass.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 64
#define MAX_LINKS 36 /* NVML_NVLINK_MAX_LINKS in NVML 13 */
#define TEXT_SIZE 96

/* Layouts as in nvml.h (pynvml: nvmlPciInfo_t, c_nvmlMemory_t). */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

/* Readings that are one unsigned int each, in the order of reading_keys. */
enum reading {
    R_ARCHITECTURE,
    R_PCIE_GEN_MAX,
    R_PCIE_WIDTH_MAX,
    R_PCIE_GEN_CURRENT,
    R_PCIE_WIDTH_CURRENT,
    R_POWER_LIMIT,
    R_POWER_DEFAULT,
    R_DISPLAY_ACTIVE,
    R_PERSISTENCE_MODE,
    R_MIG_MODE,
    R_COUNT,
};
static const char *const reading_keys[R_COUNT] = {
    "architecture",     "pcie_gen_max",   "pcie_width_max",   "pcie_gen_current",
    "pcie_width_current", "power_limit_mw", "power_default_mw", "display_active",
    "persistence_mode", "mig_mode",
};

struct optional_uint {
    int present;
    unsigned int value;
};

struct fake_gpu {
    char uuid[TEXT_SIZE];
    char name[TEXT_SIZE];
    char pci_bus_id[32];
    int has_memory;
    unsigned long long memory_total, memory_used;
    int has_cc;
    int cc_major, cc_minor;
    int has_constraints;
    unsigned int power_min_mw, power_max_mw;
    struct optional_uint readings[R_COUNT];
    int link_count;
    unsigned int link_ids[MAX_LINKS];
    char link_peers[MAX_LINKS][32];
};
typedef struct fake_gpu *nvmlDevice_t;

static struct fake_gpu gpus[MAX_GPUS];
static unsigned int gpu_count;
static char driver_version[TEXT_SIZE], nvml_version[TEXT_SIZE];
static struct optional_uint cuda_driver_version;
static int init_count;

static void log_event(const char *event) {
    const char *path = getenv("FAKE_NVML_LOG");
    FILE *log = path ? fopen(path, "a") : NULL;
    if (log) {
        fprintf(log, "%s\n", event);
        fclose(log);
    }
}

static int copy_field(char *dst, size_t size, const char *value) {
    if (strlen(value) >= size) return 0;
    strcpy(dst, value);
    return 1;
}

/* One line of the rig file; returns 0 when the line is not understood. */
static int parse_line(const char *key, const char *rest) {
    struct fake_gpu *gpu = gpu_count ? &gpus[gpu_count - 1] : NULL;
    if (!strcmp(key, "driver_version")) return copy_field(driver_version, TEXT_SIZE, rest);
    if (!strcmp(key, "nvml_version")) return copy_field(nvml_version, TEXT_SIZE, rest);
    if (!strcmp(key, "cuda_driver_version")) {
        cuda_driver_version.present = 1;
        return sscanf(rest, "%u", &cuda_driver_version.value) == 1;
    }
    if (!strcmp(key, "gpu")) {
        if (gpu_count == MAX_GPUS) return 0;
        memset(&gpus[gpu_count++], 0, sizeof gpus[0]);
        return 1;
    }
    if (!gpu) return 0;
    if (!strcmp(key, "uuid")) return copy_field(gpu->uuid, TEXT_SIZE, rest);
    if (!strcmp(key, "name")) return copy_field(gpu->name, TEXT_SIZE, rest);
    if (!strcmp(key, "pci_bus_id")) return copy_field(gpu->pci_bus_id, 32, rest);
    if (!strcmp(key, "memory")) {
        gpu->has_memory = 1;
        return sscanf(rest, "%llu %llu", &gpu->memory_total, &gpu->memory_used) == 2;
    }
    if (!strcmp(key, "compute_capability")) {
        gpu->has_cc = 1;
        return sscanf(rest, "%d %d", &gpu->cc_major, &gpu->cc_minor) == 2;
    }
    if (!strcmp(key, "power_constraints_mw")) {
        gpu->has_constraints = 1;
        return sscanf(rest, "%u %u", &gpu->power_min_mw, &gpu->power_max_mw) == 2;
    }
    if (!strcmp(key, "nvlink")) {
        int n = gpu->link_count;
        if (n == MAX_LINKS) return 0;
        gpu->link_count++;
        return sscanf(rest, "%u %31s", &gpu->link_ids[n], gpu->link_peers[n]) == 2 &&
               gpu->link_ids[n] < MAX_LINKS;
    }
    for (int r = 0; r < R_COUNT; r++) {
        if (!strcmp(key, reading_keys[r])) {
            gpu->readings[r].present = 1;
            return sscanf(rest, "%u", &gpu->readings[r].value) == 1;
        }
    }
    return 0;
}

static nvmlReturn_t load_rig(void) {
    const char *path = getenv("FAKE_NVML_RIG");
    FILE *file = path ? fopen(path, "r") : NULL;
    char line[512], key[64];
    int number = 0, ok = 1;
    if (!file) {
        fprintf(stderr, "fake_nvml: cannot open FAKE_NVML_RIG=%s\n", path ? path : "(unset)");
        return NVML_ERROR_UNKNOWN;
    }
    gpu_count = 0;
    driver_version[0] = nvml_version[0] = '\0';
    cuda_driver_version.present = 0;
    while (ok && fgets(line, sizeof line, file)) {
        int offset = 0;
        number++;
        line[strcspn(line, "\r\n")] = '\0';
        if (sscanf(line, " %63s %n", key, &offset) < 1 || key[0] == '#') continue;
        if (!parse_line(key, line + offset)) {
            fprintf(stderr, "fake_nvml: %s:%d: cannot use line: %s\n", path, number, line);
            ok = 0;
        }
    }
    fclose(file);
    return ok ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    const char *forced = getenv("FAKE_NVML_INIT_ERROR");
    (void)flags;
    if (forced && atoi(forced)) return atoi(forced);
    if (init_count == 0) {
        nvmlReturn_t ret = load_rig();
        if (ret != NVML_SUCCESS) return ret;
    }
    init_count++;
    log_event("init");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    log_event("shutdown");
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_text(const char *value, char *out, unsigned int length) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (!value[0]) return NVML_ERROR_NOT_SUPPORTED;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, value);
    return NVML_SUCCESS;
}

/* Every device call starts here: NVML checks init, then the handle, then the output pointer. */
static nvmlReturn_t check(nvmlDevice_t device, const void *out) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (device < gpus || device >= gpus + gpu_count || !out) return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_reading(nvmlDevice_t device, enum reading r, unsigned int *out) {
    nvmlReturn_t ret = check(device, out);
    if (ret != NVML_SUCCESS) return ret;
    if (!device->readings[r].present) return NVML_ERROR_NOT_SUPPORTED;
    *out = device->readings[r].value;
    return NVML_SUCCESS;
}

static void fill_pci(const char *bus_id, nvmlPciInfo_t *pci) {
    unsigned int domain = 0, bus = 0, dev = 0, function = 0;
    memset(pci, 0, sizeof *pci);
    sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &dev, &function);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = dev;
    /* The legacy field only has room for a 16-bit domain (NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT). */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", domain & 0xffff,
             bus, dev, function);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_text(driver_version, version, length);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return copy_text(nvml_version, version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    if (!cuda_driver_version.present) return NVML_ERROR_NOT_SUPPORTED;
    *version = (int)cuda_driver_version.value;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (index >= gpu_count || !device) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t ret = check(device, uuid);
    return ret != NVML_SUCCESS ? ret : copy_text(device->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    nvmlReturn_t ret = check(device, name);
    return ret != NVML_SUCCESS ? ret : copy_text(device->name, name, length);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    nvmlReturn_t ret = check(device, pci);
    if (ret != NVML_SUCCESS) return ret;
    if (!device->pci_bus_id[0]) return NVML_ERROR_NOT_SUPPORTED;
    fill_pci(device->pci_bus_id, pci);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    nvmlReturn_t ret = check(device, memory);
    if (ret != NVML_SUCCESS) return ret;
    if (!device->has_memory) return NVML_ERROR_NOT_SUPPORTED;
    memory->total = device->memory_total;
    memory->used = device->memory_used;
    memory->free = device->memory_total - device->memory_used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    nvmlReturn_t ret = check(device, major);
    if (ret != NVML_SUCCESS) return ret;
    if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->has_cc) return NVML_ERROR_NOT_SUPPORTED;
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *arch) {
    return get_reading(device, R_ARCHITECTURE, arch);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    return get_reading(device, R_PCIE_GEN_MAX, gen);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    return get_reading(device, R_PCIE_WIDTH_MAX, width);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen) {
    return get_reading(device, R_PCIE_GEN_CURRENT, gen);
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width) {
    return get_reading(device, R_PCIE_WIDTH_CURRENT, width);
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit) {
    return get_reading(device, R_POWER_LIMIT, limit);
}

nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device, unsigned int *limit) {
    return get_reading(device, R_POWER_DEFAULT, limit);
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device,
                                                          unsigned int *min_limit,
                                                          unsigned int *max_limit) {
    nvmlReturn_t ret = check(device, min_limit);
    if (ret != NVML_SUCCESS) return ret;
    if (!max_limit) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->has_constraints) return NVML_ERROR_NOT_SUPPORTED;
    *min_limit = device->power_min_mw;
    *max_limit = device->power_max_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDisplayActive(nvmlDevice_t device, unsigned int *active) {
    return get_reading(device, R_DISPLAY_ACTIVE, active);
}

nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, unsigned int *mode) {
    return get_reading(device, R_PERSISTENCE_MODE, mode);
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending) {
    nvmlReturn_t ret = get_reading(device, R_MIG_MODE, current);
    if (ret == NVML_SUCCESS && pending) *pending = *current;
    return ret;
}

/* Links not listed are inactive on a GPU that has NVLink, unsupported on one that has none. */
static int find_link(nvmlDevice_t device, unsigned int link) {
    for (int i = 0; i < device->link_count; i++)
        if (device->link_ids[i] == link) return i;
    return -1;
}

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                      unsigned int *active) {
    nvmlReturn_t ret = check(device, active);
    if (ret != NVML_SUCCESS) return ret;
    if (link >= MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->link_count) return NVML_ERROR_NOT_SUPPORTED;
    *active = find_link(device, link) >= 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link,
                                                 nvmlPciInfo_t *pci) {
    nvmlReturn_t ret = check(device, pci);
    int found;
    if (ret != NVML_SUCCESS) return ret;
    if (link >= MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->link_count) return NVML_ERROR_NOT_SUPPORTED;
    found = find_link(device, link);
    if (found < 0) return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(device->link_peers[found], pci);
    return NVML_SUCCESS;
}
