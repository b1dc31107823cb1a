/* Which CPU features the kernels may use here. Compiled without instruction-set flags (it must run on any
 * x86-64 CPU, to say which of the other libraries can be loaded); see attnlab_native.h. */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "attnlab_native.h"

/* XCR0: the register state the OS saves on a context switch (valid only when CPUID says OSXSAVE). */
static uint64_t saved_state(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

int attnlab_cpu_features(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0; /* no OSXSAVE: no AVX state at all */
    uint64_t xcr0 = saved_state();
    int ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xE6) == 0xE6; /* SSE + AVX; + opmask, ZMM halves, ZMM16-31 */
    int features = ymm && ((c >> 12) & 1) ? ATTNLAB_CPU_FMA : 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return features;
    int amx = (d >> 22) & 1 && (d >> 24) & 1; /* AMX-BF16, AMX-TILE */
    if (zmm) {
        if ((b >> 16) & 1) features |= ATTNLAB_CPU_AVX512F;
        if ((b >> 30) & 1) features |= ATTNLAB_CPU_AVX512BW;
        if ((b >> 31) & 1) features |= ATTNLAB_CPU_AVX512VL;
        __get_cpuid_count(7, 1, &a, &b, &c, &d);
        if ((a >> 5) & 1) features |= ATTNLAB_CPU_AVX512_BF16;
    }
    /* Linux hands out the tile registers only on request (ARCH_REQ_XCOMP_PERM for XTILEDATA), per process */
    if (amx && syscall(SYS_arch_prctl, 0x1023, 18) == 0) features |= ATTNLAB_CPU_AMX_BF16;
    return features;
}
