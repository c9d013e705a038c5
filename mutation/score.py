"""The mutation score of each mutated module, from mutmut's results in mutants/.

killed: a test failed, or the mutant ran out of its time (an endless loop); equivalent: a survivor
listed in mutation/equivalent.md (it cannot change behaviour). `--survivors` lists the others.
"""

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
DETECTED = {"killed", "timeout", "segfault"}


def results():
    """{mutant name: status} as `mutmut results --all true` prints them."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(HERE)).stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, re.MULTILINE))


def equivalents():
    """The mutants equivalent.md lists as equivalent (its last section lists other survivors)."""
    with open(os.path.join(HERE, "equivalent.md")) as file:
        listed = file.read().partition("\n## Not equivalent")[0]
    return set(re.findall(r"`(kfmagic\.\S+__mutmut_\d+)`", listed))


def main(argv):
    statuses, equivalent = results(), equivalents()
    counts = defaultdict(Counter)
    survivors = []
    for name, status in statuses.items():
        module = name.split(".")[1]
        kind = "killed" if status in DETECTED else "equivalent" if name in equivalent and status == "survived" else status
        counts[module][kind] += 1
        counts["all"][kind] += 1
        if kind == "survived":
            survivors.append(name)
    print(f"{'module':14}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'equiv.':>7}{'score':>7}{'w/o eq.':>8}")
    for module in sorted(counts, key=lambda m: (m == "all", m)):
        c = counts[module]
        total = sum(c.values())
        unchecked = total - c["killed"] - c["survived"] - c["no tests"] - c["equivalent"]
        score = 100 * c["killed"] / total
        print(f"{module:14}{total:8}{c['killed']:8}{c['survived']:9}{c['no tests']:9}{c['equivalent']:7}"
              f"{score:6.1f}%{100 * c['killed'] / (total - c['equivalent']):7.1f}%"
              + (f"  ({unchecked} not checked)" if unchecked else ""))
    if "--survivors" in argv:
        print("\n".join(sorted(survivors)))


if __name__ == "__main__":
    main(sys.argv[1:])
