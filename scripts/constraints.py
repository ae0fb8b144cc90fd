"""Write constraints.txt: the exact versions installed here of everything the project needs (its
dependencies and every installed extra's, transitively), for ./install.sh to reproduce a green run.

    make constraints          (after a green `make test`; the same as python scripts/constraints.py)

Only the project's requirement closure is written, not whatever else this environment holds.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from fsutil.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# pip makes these itself in every environment; pinning them would fight `pip install --upgrade pip`.
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}


def project_requirements(extras: set[str]) -> list[Requirement]:
    """The project's own requirements with `extras`, its self-references (`resnet-deploy[all]`) resolved."""
    requirements, todo, seen = [Requirement(r) for r in PROJECT["dependencies"]], set(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for line in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                todo |= requirement.extras - seen
            else:
                requirements.append(requirement)
    return requirements


def installed(requirement: Requirement) -> bool:
    try:
        metadata.distribution(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    return True


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions these requirements pull in, transitively (canonical names)."""
    found: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        if not installed(requirement):
            continue  # e.g. a dependency for another platform
        name = canonicalize_name(requirement.name)
        wanted = sorted(requirement.extras)
        if name in found and not wanted:
            continue
        found.add(name)
        for line in metadata.distribution(name).requires or []:
            child = Requirement(line)
            todo.extend((child, child_extra) for child_extra in wanted or [""])
    return found


def installed_extras() -> set[str]:
    """`dev` (what ./install.sh installs) plus every other extra that is fully installed here (gpu, bench, ...)."""
    missing = [str(r) for r in project_requirements({"dev"}) if not installed(r)]
    if missing:
        sys.exit(
            f"constraints: this environment lacks part of the dev install ({', '.join(missing)}); "
            "run ./install.sh and a green `make test` first"
        )
    extras = {"dev"}
    for extra in PROJECT["optional-dependencies"]:
        if all(installed(r) for r in project_requirements({extra})):
            extras.add(extra)
    return extras


def constraint_lines() -> list[str]:
    names = installed_closure(project_requirements(installed_extras())) - INSTALLER_TOOLS
    names.discard(canonicalize_name(PROJECT["name"]))
    lines = []
    for name in names:
        dist = metadata.distribution(name)
        # The public version only: torch==2.14.1 also admits the +cpu and +cu130 builds of that release.
        lines.append(f"{dist.metadata['Name']}=={Version(dist.version).public}")
    return sorted(lines, key=lambda line: canonicalize_name(line.split("==")[0]))


def main() -> None:
    target = ROOT / "constraints.txt"
    header = [
        "# The exact versions the last green `make test` ran with; ./install.sh installs these",
        "# (./install.sh --latest ignores them). Rewritten by `make constraints`.",
    ]
    pins = constraint_lines()
    atomic_write_text(target, "\n".join(header + pins) + "\n")
    print(f"wrote {target}: {len(pins)} exact versions (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
