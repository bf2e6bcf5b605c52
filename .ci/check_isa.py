"""Check that a built embtab._core runs nothing above the x86-64 baseline (SSE2) outside its
run-time-dispatched vector code.

Usage: python .ci/check_isa.py path/to/_core*.so [source dir, default cpp/]

The wheel is compiled for the baseline ISA; the reranker and its log pick AVX2 or AVX-512 code at
run time (``__builtin_cpu_supports``), and that code lives only in functions declared with
``__attribute__((target("...")))`` (GCC refuses to inline such a function into one without the
attribute, so its instructions cannot leak into baseline code). This script disassembles the
library (objdump), finds every function holding an instruction above SSE2 (any VEX/EVEX-encoded
instruction, a ymm/zmm/mask register, or an SSE3/SSSE3/SSE4/POPCNT/BMI/... mnemonic), and fails
unless each such function is one of the target-attributed functions named in the C++ sources,
or is defined in a namespace that the sources compile under ``#pragma GCC target`` (optim.hpp's
fused_avx2 / fused_avx512).
It also fails if it finds no vector code at all (the check would then prove nothing).

``tzcnt`` is reported but allowed: GCC emits ``rep bsf`` for ``__builtin_ctz`` in generic code
(objdump shows it as ``tzcnt``); a CPU without BMI1 runs it as ``bsf``, which agrees for the
non-zero inputs GCC emits it for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# SSE3 / SSSE3 / SSE4.1 / SSE4.2 / POPCNT / LZCNT / BMI1 / BMI2 / MOVBE / ADX mnemonics (the
# legacy-encoded ones; every VEX/EVEX form starts with "v" and is caught by that rule).
ABOVE_SSE2 = set("""
addsubpd addsubps haddpd haddps hsubpd hsubps lddqu movddup movshdup movsldup fisttp monitor mwait
pabsb pabsw pabsd palignr phaddw phaddd phaddsw phsubw phsubd phsubsw pmaddubsw pmulhrsw pshufb
psignb psignw psignd blendpd blendps blendvpd blendvps dppd dpps extractps insertps movntdqa mpsadbw
packusdw pblendvb pblendw pcmpeqq pextrb pextrd pextrq pinsrb pinsrd pinsrq phminposuw pmaxsb pmaxsd
pmaxud pmaxuw pminsb pminsd pminud pminuw pmovsxbw pmovsxbd pmovsxbq pmovsxwd pmovsxwq pmovsxdq
pmovzxbw pmovzxbd pmovzxbq pmovzxwd pmovzxwq pmovzxdq pmuldq pmulld ptest roundpd roundps roundsd
roundss pcmpgtq pcmpestri pcmpestrm pcmpistri pcmpistrm crc32 popcnt lzcnt andn bextr blsi blsmsk
blsr bzhi mulx pdep pext rorx sarx shlx shrx movbe adcx adox
""".split())
ALLOWED_ANYWHERE = {"tzcnt"}
# Old system instructions that start with "v" but are not vector instructions.
NOT_VECTOR = {"verr", "verw"}
WIDE_REG = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")


def target_functions(src: Path) -> dict:
    """Names of the functions declared with __attribute__((target(...))) -> their target string."""
    found = {}
    for f in sorted(src.rglob("*.[ch]pp")):
        text = f.read_text()
        for m in re.finditer(r'__attribute__\s*\(\(\s*target\("([^"]+)"\)', text):
            decl = re.search(r"(\w+)\s*(?:<[^;{()]*>)?\s*\(", text[m.end():m.end() + 400])
            if decl:
                found[decl.group(1)] = m.group(1)
    return found


def target_namespaces(src: Path) -> dict:
    """Namespaces of ``embtab`` compiled under ``#pragma GCC target("...")`` -> their target
    string: a ``namespace NAME {`` that directly follows the target pragma (only
    ``#pragma GCC optimize`` lines between them), as optim.hpp compiles optim_impl.inc once per
    ISA level; every function, lambda and member function defined in the namespace then carries
    the target, as an attribute would give it."""
    found = {}
    pattern = (r'#pragma GCC target\("([^"]+)"\)\s*\n(?:\s*#pragma GCC optimize[^\n]*\n)*'
               r'\s*namespace (\w+)\s*\{')
    for f in sorted(src.rglob("*.[ch]pp")):
        for m in re.finditer(pattern, f.read_text()):
            found[m.group(2)] = m.group(1)
    return found


def scope_of(func: str) -> str:
    """The scope (namespace and class path) of the function itself, not of its return type,
    template arguments or parameters: ``unsigned long embtab::fused_avx2::run_listed_part<...>(...)``
    -> ``embtab::fused_avx2``; ``embtab::fused_avx2::ScratchArray<float>::reserve(...)`` ->
    ``embtab::fused_avx2::ScratchArray``; a lambda's is its enclosing function's; an operator's
    (``operator<``, a conversion ``operator T``) is the scope written before ``operator``."""
    depth, out, k = 0, [], 0
    while k < len(func):
        if depth == 0 and func.startswith("operator", k) and (k == 0 or not (func[k - 1].isalnum() or func[k - 1] == "_")):
            break  # the scope is what precedes the operator's name
        ch = func[k]
        if ch in "<(":
            if ch == "(" and depth == 0:
                break
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
        k += 1
    name = "".join(out).rstrip(":").split(" ")[-1]
    if k < len(func) and func.startswith("operator", k):
        return name  # "embtab::Foo::" before "operator": the scope itself
    return name.rsplit("::", 1)[0] if "::" in name else ""


def above_baseline(mnemonic: str, operands: str) -> bool:
    if mnemonic in ALLOWED_ANYWHERE:
        return False
    if mnemonic.startswith("v") and mnemonic not in NOT_VECTOR:
        return True
    if mnemonic.startswith("k") and WIDE_REG.search(operands):
        return True
    return mnemonic in ABOVE_SSE2 or bool(WIDE_REG.search(operands))


def scan(so: Path):
    """{function: {mnemonic: count}} of above-baseline instructions, and all tzcnt sites."""
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(so)], check=True,
                         capture_output=True, text=True).stdout
    hits: dict = defaultdict(lambda: defaultdict(int))
    tz: dict = defaultdict(int)
    func = None
    for line in dis.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            func = head.group(1)
            continue
        ins = re.match(r"^\s+[0-9a-f]+:\s+(?:(?:rep[a-z]*|lock|notrack|bnd|data16|addr32)\s+)*([a-z0-9]+)\s*(.*)$", line)
        if not ins or func is None:
            continue
        mnem, ops = ins.group(1), ins.group(2)
        if mnem == "tzcnt":
            tz[func] += 1
        if above_baseline(mnem, ops):
            hits[func][mnem] += 1
    return hits, tz


def base_name(func: str) -> str:
    """``embtab::detail::score_pass_avx2<float>(float const*, ...) [clone .cold]`` -> ``score_pass_avx2``."""
    name = func.split("(", 1)[0]
    depth, out = 0, []
    for ch in name:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).rsplit("::", 1)[-1].split(" ")[-1].split(".")[0]


def main(argv) -> int:
    if not 2 <= len(argv) <= 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    so = Path(argv[1])
    src = Path(argv[2]) if len(argv) == 3 else Path(__file__).resolve().parent.parent / "cpp"
    targets = target_functions(src)
    if not targets:
        print(f"check_isa: no target-attributed functions found under {src}", file=sys.stderr)
        return 1
    spaces = target_namespaces(src)
    hits, tz = scan(so)

    def space_of(f: str):
        scope = scope_of(f)
        for ns in spaces:
            if scope == f"embtab::{ns}" or scope.startswith(f"embtab::{ns}::"):
                return ns
        return None

    def target_of(f: str):
        ns = space_of(f)
        return spaces[ns] if ns else targets.get(base_name(f))

    bad = {f: m for f, m in hits.items() if target_of(f) is None}
    print(f"check_isa: {so.name}: {len(hits)} functions hold instructions above SSE2, all of them "
          f"target-attributed: {'no' if bad else 'yes'}")
    for f, m in sorted(hits.items(), key=lambda kv: base_name(kv[0])):
        b = base_name(f)
        kinds = sorted(m, key=m.get, reverse=True)
        ns = space_of(f)
        b = f"{ns}::{b}" if ns else b
        print(f"  {b:28s} target({target_of(f) or 'NONE'!r}): {sum(m.values())} instructions, "
              f"e.g. {' '.join(kinds[:6])}")
    if tz:
        print(f"  tzcnt (rep bsf; runs as bsf without BMI1) in {len(tz)} functions: "
              + ", ".join(sorted({base_name(f) for f in tz})[:8]))
    if bad:
        print("check_isa: instructions above the baseline in functions without a target attribute "
              "(they would run on a CPU that lacks them):", file=sys.stderr)
        for f, m in bad.items():
            print(f"  {f}: {dict(m)}", file=sys.stderr)
        return 1
    if not hits:
        print("check_isa: no vector code found at all; is this the EMBTAB_NO_VECTOR build?",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
