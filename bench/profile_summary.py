"""Summary of a py-spy speedscope profile (`py-spy record --threads [--gil] --format speedscope`): each
thread's share of the samples, its top leaf frames and its top frames anywhere on the stack.

    python bench/profile_summary.py PROFILE.json [LEAF_ROWS] [INCLUSIVE_ROWS]
"""
import collections
import json
import sys

d = json.load(open(sys.argv[1]))
frames = d["shared"]["frames"]
total = sum(sum(p["weights"]) for p in d["profiles"])
print(f"total weight {total:.3f} s, profiles {len(d['profiles'])}")
for p in sorted(d["profiles"], key=lambda p: -sum(p["weights"])):
    w = sum(p["weights"])
    if w < 0.01 * total:
        continue
    print(f"\n== {p['name']}: {w:.3f} s ({100 * w / total:.1f} %), {len(p['samples'])} samples")
    leaf, incl = collections.Counter(), collections.Counter()
    for stack, weight in zip(p["samples"], p["weights"]):
        f = frames[stack[-1]]
        leaf[f"{f['name']} ({f.get('file', '').split('/')[-1]}:{f.get('line')})"] += weight
        seen = set()
        for i in stack:
            fr = frames[i]
            key = f"{fr['name']} ({fr.get('file', '').split('site-packages/')[-1].split('/src/')[-1]})"
            if key not in seen:
                incl[key] += weight
                seen.add(key)
    print("  top self:")
    for k, v in leaf.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 12):
        print(f"    {100 * v / w:5.1f} %  {k}")
    print("  top inclusive:")
    for k, v in incl.most_common(int(sys.argv[3]) if len(sys.argv) > 3 else 25):
        print(f"    {100 * v / w:5.1f} %  {k}")
