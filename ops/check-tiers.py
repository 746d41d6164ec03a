#!/usr/bin/env python3
"""Every test target of the workspace belongs to a test tier.

The tiers are the `test-*` aliases in .cargo/config.toml. `ops/dev.sh test`
runs every target anyway, but a target that no tier names is one that nobody
running a tier would ever see fail. Reads `cargo metadata` and the aliases;
understands exactly the forms the aliases use (`--workspace --exclude P`,
`-p P`, `--lib --bins`, `--test T`, and the expressions `binary(/fuzz_/)` and
`kind(test) and not binary(/fuzz_/)`). An alias in any other form is an
error here, so this check cannot pass by not understanding one.

Run by `ops/dev.sh lint`; exits 1 naming each target no tier covers.
"""

import json
import pathlib
import shlex
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def targets():
    meta = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT
        )
    )
    for package in meta["packages"]:
        for target in package["targets"]:
            kinds = set(target["kind"])
            if kinds & {"lib", "bin", "test"}:
                kind = "test" if "test" in kinds else "unit"
                yield package["name"], kind, target["name"]


def covers(args, workspace):
    """The (package, kind, name) predicate one alias covers."""
    words = shlex.split(args) if isinstance(args, str) else list(args)
    if words[:2] != ["nextest", "run"]:
        raise ValueError(f"not a nextest run: {words}")
    packages, excluded, tests, expr, unit = set(), set(), set(), None, False
    i = 2
    while i < len(words):
        w = words[i]
        if w == "--workspace":
            packages |= workspace
        elif w == "--exclude":
            i += 1
            excluded.add(words[i])
        elif w == "-p":
            i += 1
            packages.add(words[i])
        elif w == "--test":
            i += 1
            tests.add(words[i])
        elif w in ("--lib", "--bins"):
            unit = True
        elif w == "-E":
            i += 1
            expr = words[i]
        else:
            raise ValueError(f"unknown argument {w!r} in {words}")
        i += 1
    packages -= excluded
    if expr not in (None, "binary(/fuzz_/)", "kind(test) and not binary(/fuzz_/)"):
        raise ValueError(f"unknown expression {expr!r}")

    def covered(package, kind, name):
        if package not in packages:
            return False
        if unit or tests:
            return (unit and kind == "unit") or (kind == "test" and name in tests)
        if expr == "binary(/fuzz_/)":
            return kind == "test" and name.startswith("fuzz_")
        if expr is not None:
            return kind == "test" and not name.startswith("fuzz_")
        return True

    return covered


def main():
    all_targets = list(targets())
    workspace = {package for package, _, _ in all_targets}
    config = tomllib.loads((ROOT / ".cargo" / "config.toml").read_text())
    tiers = {
        name: covers(args, workspace)
        for name, args in config.get("alias", {}).items()
        if name.startswith("test-")
    }
    missing = [
        f"{package} {kind} target `{name}`"
        for package, kind, name in all_targets
        if not any(tier(package, kind, name) for tier in tiers.values())
    ]
    for m in missing:
        print(f"in no test tier (.cargo/config.toml): {m}", file=sys.stderr)
    print(f"{len(all_targets)} targets, {len(tiers)} tiers, {len(missing)} uncovered")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
