"""The synthetic generators' peak memory against the estimates that refuse sizes too large.

Usage (from the repository root, the package built or installed):
    python bench/parts/generator_memory.py [--only v1 v2 stream]

Each setting runs in a child process: its peak RSS (``ru_maxrss``) after generating, less its
peak after the imports, against ``power_law_bytes`` / ``power_law_v2_bytes`` /
``power_law_stream_bytes`` (``embtab.data``), the estimates each generator checks against
RAM + swap before allocating. Prints MB measured, MB estimated and their ratio per setting.
The largest setting needs about 6 GB of memory.
"""

import argparse
import json
import subprocess
import sys

# (generator, its keyword arguments; 18 genres, rank 16, 50 per user unless given)
SETTINGS = [
    ("v1", dict(n_users=20_000, n_items=3_000)),
    ("v1", dict(n_users=100_000, n_items=3_000, interactions_per_user=20)),
    ("v1", dict(n_users=2_000, n_items=200_000, n_genres=50)),
    ("v1", dict(n_users=200_000, n_items=3_000, n_genres=100, interactions_per_user=10)),
    ("v1", dict(n_users=500_000, n_items=3_000, interactions_per_user=1)),
    ("v1", dict(n_users=3_000, n_items=20_000, interactions_per_user=200, zipf_s=2.5)),
    ("v2", dict(n_users=20_000, n_items=3_000, rank=16)),
    ("v2", dict(n_users=2_000, n_items=100_000, rank=40)),
    ("v2", dict(n_users=100_000, n_items=2_000, rank=64, interactions_per_user=20)),
    ("v2", dict(n_users=500_000, n_items=300, rank=16, interactions_per_user=1)),
    ("stream", dict(n_users=2_000, n_items=3_000)),
    ("stream", dict(n_users=20_000, n_items=10_000, n_windows=4)),
    ("stream", dict(n_users=5_000, n_items=50_000, interactions_per_window=20)),
]

CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
from embtab.data import power_law
from embtab.data.generator_v2 import power_law_v2, power_law_v2_bytes
from embtab.data.stream import power_law_stream, power_law_stream_bytes
from embtab.data.synthetic import power_law_bytes
kind, kw = sys.argv[1], json.loads(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "v1":
    est = power_law_bytes(kw["n_users"], kw["n_items"], kw.get("n_genres", 18),
                          kw.get("interactions_per_user", 50))
    power_law(**kw)
elif kind == "v2":
    est = power_law_v2_bytes(kw["n_users"], kw["n_items"], kw["rank"],
                             kw.get("interactions_per_user", 50))
    power_law_v2(**kw)
else:
    est = power_law_stream_bytes(kw["n_users"], kw["n_items"], kw.get("n_windows", 8),
                                 kw.get("interactions_per_window", 8.0), kw.get("rank", 16))
    power_law_stream(**kw)
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"measured": peak, "estimated": est}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=["v1", "v2", "stream"])
    args = ap.parse_args()
    for kind, kw in SETTINGS:
        if args.only and kind not in args.only:
            continue
        out = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(kw)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        m, e = r["measured"] / 1e6, r["estimated"] / 1e6
        print(f"{kind:6s} {kw}: measured {m:,.0f} MB, estimated {e:,.0f} MB ({e / m:.2f}x)",
              flush=True)


if __name__ == "__main__":
    main()
