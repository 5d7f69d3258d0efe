#!/bin/sh
# Fails if the guest ELF contains instructions the target host must never
# see: non-deterministic ones (TSC, RNG, RDPID) and ones its CPL0 emulator
# cannot execute (XSAVE family, FXSAVE/FXRSTOR, CMPXCHG16B, and any SSE
# instruction: PVM's emulator lacks most of them, e.g. xorps).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
elf=${1:-"$here/target/x86_64-unknown-linux-gnu/release/understudy-guest"}
if [ ! -f "$elf" ]; then
    echo "check-forbidden-insns: $elf not found (build it first)" >&2
    exit 2
fi
pattern='[[:space:]](rdtscp?|rdrand|rdseed|rdpid|xsave[a-z0-9]*|xrstor[a-z0-9]*|fxsave[a-z0-9]*|fxrstor[a-z0-9]*|cmpxchg16b)([[:space:]]|$)|%xmm[0-9]'
# objdump's exit status is checked separately so a failed disassembly is not
# mistaken for a clean one.
dis=$(objdump -d --no-show-raw-insn "$elf")
if hits=$(printf '%s\n' "$dis" | grep -E "$pattern"); then
    echo "check-forbidden-insns: forbidden instructions in $elf:" >&2
    printf '%s\n' "$hits" >&2
    exit 1
fi
echo "check-forbidden-insns: ok ($elf)"
