#!/usr/bin/env python3
"""Every integration test file runs: with `autotests = false` (proxy/ and inference/: most
files share one test binary, see proxy/tests/end_to_end.rs), cargo no longer finds a new
`tests/*.rs` by itself, and a file that is neither a `[[test]]` target in Cargo.toml nor a
`mod` of one would never be compiled or run. This fails on such a file, and on a file that
is in two places (its tests would run twice).

    python3 scripts/test_files_run.py proxy inference
"""
import re
import sys
from pathlib import Path


def check(crate: Path) -> list[str]:
    manifest = (crate / "Cargo.toml").read_text()
    targets = set(re.findall(r'^path = "tests/(\w+)\.rs"$', manifest, re.M))
    # Where each file is a module: a test target's root may declare others (`mod x;`).
    owners: dict[str, list[str]] = {}
    for target in targets:
        for m in re.findall(r"^mod (\w+);$", (crate / "tests" / f"{target}.rs").read_text(), re.M):
            owners.setdefault(m, []).append(target)
    problems = []
    for f in sorted((crate / "tests").glob("*.rs")):
        places = ([f"[[test]] {f.stem}"] if f.stem in targets else []) + [f"`mod` of {t}.rs" for t in owners.get(f.stem, [])]
        if not places:
            problems.append(f"{f}: neither a [[test]] in {crate}/Cargo.toml nor a `mod` of one: it would never run")
        elif len(places) > 1:
            problems.append(f"{f}: {' and '.join(places)}: its tests would run more than once")
    return problems


problems = [p for crate in sys.argv[1:] for p in check(Path(crate))]
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
