"""/proc/cpuinfo texts of three kinds of CPU for the planner tests (their private CPU-peak cache: tests/conftest.py).

Not a conftest.py: a second conftest module would shadow tests/conftest.py for `from conftest import ...`."""

from __future__ import annotations

_FLAGS_COMMON = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq ssse3 fma cx16 pcid "
    "sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm bmi1 avx2 smep bmi2 erms"
)
CPUINFO = {
    # this build machine: AVX2 only
    "epyc_avx2": ("AMD EPYC 7B13", _FLAGS_COMMON + " sha_ni clzero xsaveerptr wbnoinvd arat umip vaes vpclmulqdq"),
    # Sapphire Rapids: AMX tiles and AVX-512 bf16
    "xeon_amx": ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", _FLAGS_COMMON + " avx512f avx512dq avx512cd "
                 "avx512bw avx512vl avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8 arch_capabilities"),
    # Zen 4: AVX-512 bf16, no AMX
    "epyc_zen4": ("AMD EPYC 9B14", _FLAGS_COMMON + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 "
                  "avx512_vnni avx512_vbmi2"),
}


def cpuinfo_text(kind: str, processors: int = 2) -> str:
    model, flags = CPUINFO[kind]
    blocks = [f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n"
              for i in range(processors)]
    return "\n".join(blocks)
