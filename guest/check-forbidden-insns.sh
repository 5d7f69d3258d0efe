#!/bin/sh
# Fails if the guest ELF contains instructions the target host must never
# see:
#
# 1. Anywhere in the image: non-deterministic instructions (TSC, RNG, RDPID)
#    and ones the host's CPL0 emulator (PVM) cannot execute (XSAVE family,
#    FXSAVE/FXRSTOR, CMPXCHG16B).
#
# 2. SSE (any %xmm operand) in any code that can run. Our crates are built
#    without SSE, but the prebuilt `core` is not, and a few of its
#    formatting routines (Formatter::pad, Formatter::pad_integral, integer
#    Display, str::count) use SSE2. They get linked as soon as anything can
#    panic with a formatted message (every bounds check does): the panic site
#    stores their addresses in a `fmt::Arguments`. They run only if something
#    renders that `Arguments`, which needs a `core::fmt::Formatter`, and on
#    stable Rust only `core::fmt::write` (or the unstable `Formatter::new`)
#    creates one. So SSE code is accepted only if it is provably dead: every
#    chain of references leading to it, and every chain leading to
#    `core::fmt::write` / `Formatter::new`, must pass through a function that
#    itself needs a Formatter to run (a `Formatter` method, a formatting
#    trait's `fmt`, or core's private `DisplayBuffer`, which only IP address
#    Display impls use). Then nothing ever creates the first Formatter, and
#    no SSE instruction can execute, at CPL0 or CPL3. The guest keeps this
#    true by never formatting (its panic handler prints the location and
#    static messages only).
#
#    References followed: direct calls/jumps, addresses taken by code
#    (lea/mov, immediates), calls through GOT slots (the prebuilt core is
#    PIC). A
#    function whose address sits in other data (a vtable, a table of
#    function pointers) could be called from anywhere, and a function with no
#    visible reference at all may be an entry point: on a path that needs a
#    proof, both fail the check.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
elf=${1:-"$here/target/x86_64-unknown-linux-gnu/release/understudy-guest"}
if [ ! -f "$elf" ]; then
    echo "check-forbidden-insns: $elf not found (build it first)" >&2
    exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Each tool's exit status is checked separately (no pipelines) so a failed
# disassembly is not mistaken for a clean one.
objdump -d --no-show-raw-insn "$elf" >"$tmp/dis"
objdump -s -j .rodata -j .data "$elf" >"$tmp/hexdump"
nm -C "$elf" >"$tmp/names"

pattern='[[:space:]](rdtscp?|rdrand|rdseed|rdpid|xsave[a-z0-9]*|xrstor[a-z0-9]*|fxsave[a-z0-9]*|fxrstor[a-z0-9]*|cmpxchg16b)([[:space:]]|$)'
if grep -E "$pattern" "$tmp/dis" >"$tmp/hits"; then
    echo "check-forbidden-insns: forbidden instructions in $elf:" >&2
    cat "$tmp/hits" >&2
    exit 1
fi

# 8-byte little-endian words at 8-aligned addresses of .rodata/.data, as
# "address word" in hex without leading zeros.
awk '
function hex2n(s,   i, n) {
    n = 0
    for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
    return n
}
/^ [0-9a-f]+ / {
    line = substr($0, 2)
    cut = index(line, "  ")
    if (cut) line = substr(line, 1, cut - 1)
    n = split(line, f, " ")
    base = hex2n(f[1])
    for (g = 2; g <= n; g++)
        for (k = 0; k < length(f[g]) / 2; k++)
            byte[base + (g - 2) * 4 + k] = substr(f[g], 2 * k + 1, 2)
}
END {
    for (a in byte) {
        a += 0
        if (a % 8 != 0) continue
        w = ""
        for (k = 7; k >= 0; k--) {
            if (!((a + k) in byte)) { w = ""; break }
            w = w byte[a + k]
        }
        sub(/^0+/, "", w)
        if (w != "") printf "%x %s\n", a, w
    }
}' "$tmp/hexdump" >"$tmp/words"

if ! awk -v elf="$elf" '
function norm(a) { sub(/^0+/, "", a); return a == "" ? "0" : a }
function bound(n) {
    if (n ~ /^<core::fmt::Formatter>::/ && n !~ /^<core::fmt::Formatter>::new/) return 1
    if (n ~ / as core::fmt::(Display|Debug|LowerHex|UpperHex|Octal|Binary|LowerExp|UpperExp|Pointer)>::fmt$/) return 1
    if (n ~ /^<core::net::display_buffer::DisplayBuffer/) return 1
    return 0
}
# A function needs a Formatter to run only if every name at its address does
# (identical code may be folded under several names).
function fn_bound(a,   k, parts, n) {
    if (!(a in names)) return 0
    n = split(names[a], parts, SUBSEP)
    for (k = 1; k <= n; k++) if (!bound(parts[k])) return 0
    return 1
}
function label(a) { return (a in names) ? names[a] : "?" }
FNR == 1 { file++ }
# 1: symbol names, crate hashes stripped.
file == 1 && NF >= 3 && $2 ~ /^[tTwW]$/ {
    a = norm($1)
    n = $0
    sub(/^[0-9a-f]+ [a-zA-Z] /, "", n)
    gsub(/\[[0-9a-f]+\]/, "", n)
    sub(/::h[0-9a-f]+$/, "", n)
    # (Not a ?: expression: mawk creates names[a] before testing for it.)
    if (a in names) names[a] = names[a] SUBSEP n
    else names[a] = n
    next
}
# 2: data words.
file == 2 { word[$1] = $2; next }
# 3: disassembly, first pass: function starts.
file == 3 && /^[0-9a-f]+ <.*>:$/ { start[norm($1)] = 1; next }
# 4: disassembly, second pass: SSE and references.
file == 4 && /^[0-9a-f]+ <.*>:$/ { cur = norm($1); next }
file == 4 && /^ *[0-9a-f]+:/ {
    if ($0 ~ /%xmm[0-9]/) { if (!(cur in xmm)) nxmm++; xmm[cur] = 1 }
    rest = $0
    sub(/^ *[0-9a-f]+:/, "", rest)
    # The static relocation model also takes addresses as immediates
    # (mov $0x106c70,%eax), which objdump does not annotate.
    imm = rest
    while (match(imm, /\$0x[0-9a-f]+/)) {
        t = norm(substr(imm, RSTART + 3, RLENGTH - 3))
        imm = substr(imm, RSTART + RLENGTH)
        if ((t in start) && t != cur) refs[t] = refs[t] " " cur
    }
    while (match(rest, /[0-9a-f]+ </)) {
        t = norm(substr(rest, RSTART, RLENGTH - 2))
        rest = substr(rest, RSTART + RLENGTH)
        if ((t in start) && t != cur) {
            refs[t] = refs[t] " " cur
        } else if ((t in word) && (word[t] in start)) {
            refs[word[t]] = refs[word[t]] " " cur
            via_code[t] = 1
        }
    }
}
END {
    if (nxmm == 0) { print "no SSE"; exit 0 }
    for (w in word)
        if ((word[w] in start) && !(w in via_code)) esc[word[w]] = esc[word[w]] " " w
    # Where a Formatter can come from, and the SSE code itself.
    for (a in names) {
        n = names[a]
        if (n ~ /(^|\034)core::fmt::write(\034|$)/) { src[a] = 1; have_write = 1 }
        if (n ~ /(^|\034)<core::fmt::Formatter>::new/) src[a] = 1
    }
    if (!have_write) {
        printf "the image has SSE code but no core::fmt::write, so nothing shows where Formatters are made\n"
        exit 1
    }
    for (a in xmm) src[a] = 1
    bad = 0
    for (a in src) { stack[++sp] = a; seen[a] = 1; parent[a] = "" }
    while (sp > 0) {
        f = stack[sp--]
        if (fn_bound(f)) continue
        why = ""
        if (f in esc) why = "its address is stored in data at" esc[f]
        else if (!(f in refs)) why = "nothing visibly refers to it (an entry point?)"
        if (why != "") {
            bad++
            printf "%s (0x%s): %s\n", label(f), f, why
            for (p = parent[f]; p != ""; p = parent[p]) printf "    which leads to %s (0x%s)\n", label(p), p
            continue
        }
        n = split(refs[f], rs, " ")
        for (k = 1; k <= n; k++)
            if (!(rs[k] in seen)) { seen[rs[k]] = 1; parent[rs[k]] = f; stack[++sp] = rs[k] }
    }
    if (bad) exit 1
    printf "SSE only in %d prebuilt core::fmt function(s) that nothing outside formatting code can reach:", nxmm
    for (a in xmm) { x = label(a); gsub(SUBSEP, " = ", x); printf " %s;", x }
    printf "\n"
}' "$tmp/names" "$tmp/words" "$tmp/dis" "$tmp/dis" >"$tmp/sse"; then
    echo "check-forbidden-insns: SSE code in $elf may be reachable:" >&2
    cat "$tmp/sse" >&2
    exit 1
fi
echo "check-forbidden-insns: ok ($elf); $(cat "$tmp/sse")"
