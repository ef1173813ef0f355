"""The wheel list of the offline GPU check (scripts/gpu-wheels.txt): read it, check a wheel folder.

    python scripts/wheel_list.py download|build     the section's requirements, one a line
    python scripts/wheel_list.py check DIR          every wheel present; total size (exit 2 if not)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LIST = Path(__file__).with_name("gpu-wheels.txt")
LIMIT_BYTES = 64 << 20
OWN = "viperbench"


def sections(path: Path = LIST) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = out.setdefault(line.strip("[]"), [])
        elif current is None:
            raise ValueError(f"{path.name}: {line!r} before any [section]")
        else:
            current.append(line)
    return out


def normal(name: str) -> str:
    """A distribution name as wheel files and PEP 503 compare it: lower case, runs of -_. as one _."""
    return re.sub(r"[-_.]+", "_", name).lower()


def requirement_name(requirement: str) -> str:
    return normal(re.split(r"[<>=!~;\[ ]", requirement, 1)[0])


def carried() -> list[str]:
    """Names of the wheels a complete folder holds."""
    s = sections()
    return [OWN] + [requirement_name(r) for r in s.get("download", []) + s.get("build", [])]


def wheels(folder: Path) -> dict[str, Path]:
    return {normal(p.name.split("-", 1)[0]): p for p in sorted(Path(folder).glob("*.whl"))}


def missing(folder: Path) -> list[str]:
    have = wheels(folder)
    return [name for name in carried() if name not in have]


def total_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in wheels(folder).values())


def main(argv: list[str]) -> int:
    if argv[:1] in (["download"], ["build"]):
        print("\n".join(sections()[argv[0]]))
        return 0
    if len(argv) == 2 and argv[0] == "check":
        folder = Path(argv[1])
        gone = missing(folder)
        size = total_bytes(folder)
        for p in wheels(folder).values():
            print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.name}")
        print(f"{len(wheels(folder))} wheels, {size / 2**20:.1f} MiB in {folder} (limit {LIMIT_BYTES >> 20} MiB)")
        if gone:
            print(f"gpu-wheels: missing from {folder}: {', '.join(gone)}", file=sys.stderr)
        if size > LIMIT_BYTES:
            print(f"gpu-wheels: {size / 2**20:.1f} MiB is over the {LIMIT_BYTES >> 20} MiB limit", file=sys.stderr)
        return 2 if gone or size > LIMIT_BYTES else 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
