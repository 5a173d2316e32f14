"""benchmarks/machine.py: the machine line's fields parsed from /proc text."""
from benchmarks import machine

# /proc/cpuinfo excerpts in the kernel's format (tab before the colon, one block per processor)
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx_vnni avx512_bf16 avx512_vnni tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx_vnni avx512_bf16 avx512_vnni tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 sha_ni
bugs\t\t: sysret_ss_attrs null_seg spectre_v1
"""
# Cascade Lake: AVX-512 without its bfloat16 instructions
CASCADE_LAKE = """model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
flags\t\t: avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""


def test_isa_flags():
    assert machine.isa_support(SAPPHIRE_RAPIDS) == {
        "AVX2": True, "AVX-512": True, "AVX512-BF16": True, "AMX": True}
    assert machine.isa_support(EPYC_AVX2) == {
        "AVX2": True, "AVX-512": False, "AVX512-BF16": False, "AMX": False}
    assert machine.isa_support(CASCADE_LAKE) == {
        "AVX2": True, "AVX-512": True, "AVX512-BF16": False, "AMX": False}
    # a flag is a whole word: "avx512_vnni" does not make AVX512-BF16, "avx" not AVX2
    words = machine.isa_support("flags\t: avx avx512_vnni avx512_bf16x\n")
    assert not words["AVX512-BF16"] and not words["AVX2"]
    assert not any(machine.isa_support("").values())  # no /proc/cpuinfo (not Linux)


def test_cpu_model():
    assert machine.cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert machine.cpu_model(EPYC_AVX2) == "AMD EPYC"
    assert machine.cpu_model("") == "unknown CPU"


def test_allocator_from_the_mapped_libraries(tmp_path):
    glibc = ("7f1c2a000000-7f1c2a028000 r--p 00000000 08:01 1835 "
             "/usr/lib/x86_64-linux-gnu/libc.so.6\n"
             "7ffd5e9f0000-7ffd5ea11000 rw-p 00000000 00:00 0                          [stack]\n"
             "7f1c29e00000-7f1c29e21000 rw-p 00000000 00:00 0 \n")
    maps = {"glibc": glibc,
            "tcmalloc": glibc + ("7f1c2b000000-7f1c2b020000 r-xp 00000000 08:01 99 "
                                 "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9\n"),
            "jemalloc": glibc + ("7f1c2c000000-7f1c2c020000 r-xp 00000000 08:01 98 "
                                 "/opt/lib/libjemalloc.so.2\n")}
    for name, text in maps.items():
        (tmp_path / name).write_text(text)
    assert machine.allocator(str(tmp_path / "glibc")) == "glibc malloc"
    assert machine.allocator(str(tmp_path / "tcmalloc")) == "libtcmalloc_minimal.so.4.5.9"
    assert machine.allocator(str(tmp_path / "jemalloc")) == "libjemalloc.so.2"
    assert machine.allocator(str(tmp_path / "no-such-maps")) == "unknown"  # not Linux


def test_the_line_names_every_field():
    line = machine.describe()
    assert line.startswith("# machine: ")
    assert "AVX2" in line and "AMX" in line and "allocator: " in line and "cpus online" in line
