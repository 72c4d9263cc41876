#!/usr/bin/env python3
"""Fails when the fuzz crate does not patch the dependencies the workspace patches.

`fuzz/` is a workspace of its own (it builds with nightly and `cargo fuzz`), so the
workspace's `[patch.crates-io]` does not reach it: without the same section it would fuzz a
gateway built on the unpatched crates (vendor/README.md says why they are patched).

    python3 scripts/patches_match.py [ROOT]
"""

import sys
import tomllib
from pathlib import Path


def patches(manifest: Path) -> dict:
    """The manifest's crates.io patches: crate name -> resolved path (or the spec as written)."""
    with manifest.open("rb") as f:
        section = tomllib.load(f).get("patch", {}).get("crates-io", {})
    out = {}
    for name, spec in section.items():
        path = spec.get("path") if isinstance(spec, dict) else None
        out[name] = (manifest.parent / path).resolve() if path else spec
    return out


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    ours, fuzz = patches(root / "Cargo.toml"), patches(root / "fuzz" / "Cargo.toml")
    wrong = [
        f"{name}: the workspace patches it with {spec}, fuzz/Cargo.toml with {fuzz.get(name, 'nothing')}"
        for name, spec in sorted(ours.items())
        if fuzz.get(name) != spec
    ]
    wrong += [f"{name}: patched in fuzz/Cargo.toml only" for name in sorted(set(fuzz) - set(ours))]
    for line in wrong:
        print(f"patches_match: {line}", file=sys.stderr)
    if not wrong:
        print(f"patches_match: fuzz/ patches the same {len(ours)} crate(s) as the workspace")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
