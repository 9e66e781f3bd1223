"""What a benchmark run runs on, and whether the project's runtime is complete there.

    python benchmarks/gpu_environment.py [--json FILE] [--require-cuda]

Prints one JSON object: the date, Python, the versions of torch (with its CUDA and cuDNN),
transformers and every runtime requirement of the installed vidcom2-cli, and the GPU (name,
memory, compute capability, driver) where there is one. Then it checks that each requirement is
installed in a version the project accepts, that each one and every vidcom2_cli module imports,
that an installed vidcom2_cli (a carried wheel) is the same code as this tree's src/, and
(``--require-cuda``) that torch sees a GPU. Anything wrong is listed under "problems" and
the exit status is 1, so that a prepared GPU run says at once what is missing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import pkgutil
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

PROJECT = "vidcom2-cli"
SOURCE = Path(__file__).resolve().parents[1] / "src" / "vidcom2_cli"
ALSO_REPORTED = ("flash-attn", "ray", "huggingface-hub")  # optional or indirect, reported only


def runtime_requirements(distribution: str) -> list[Requirement]:
    """An installed distribution's requirements that hold here without extras."""
    requirements = [Requirement(text) for text in metadata.requires(distribution) or []]
    return [requirement for requirement in requirements
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""})]


def top_level_modules() -> dict[str, list[str]]:
    """Distribution name (normalised) -> the top-level modules it installs."""
    modules: dict[str, list[str]] = {}
    for module, distributions in metadata.packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(normalise(distribution), []).append(module)
    return modules


def normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_requirements(problems: list[str]) -> dict[str, str | None]:
    """Each requirement's installed version; a problem for each one missing, too old or that
    does not import."""
    versions: dict[str, str | None] = {PROJECT: version_of(PROJECT)}
    if versions[PROJECT] is None:
        problems.append(f"{PROJECT} is not installed (no package metadata)")
        return versions
    modules = top_level_modules()
    for requirement in runtime_requirements(PROJECT):
        installed = version_of(requirement.name)
        versions[requirement.name] = installed
        if installed is None:
            problems.append(f"{requirement.name} is not installed (needs {requirement})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} does not satisfy {requirement}")
        for module in modules.get(normalise(requirement.name), []):
            if module.startswith("_"):
                continue
            try:
                importlib.import_module(module)
            except Exception as error:  # a broken extension fails in many ways
                problems.append(f"import {module} ({requirement.name}): "
                                f"{type(error).__name__}: {error}")
    for name in ALSO_REPORTED:
        versions[name] = version_of(name)
    check_dependencies_of_dependencies(problems)
    return versions


def check_dependencies_of_dependencies(problems: list[str]) -> None:
    """What ``pip check`` would say about the packages the project needs, and theirs in turn
    (a carried transformers may want a newer huggingface-hub than the machine has)."""
    direct = {normalise(requirement.name) for requirement in runtime_requirements(PROJECT)}
    seen = {normalise(PROJECT), *direct}
    queue = [name for name in direct if version_of(name) is not None]
    while queue:
        name = queue.pop()
        for requirement in runtime_requirements(name):
            key = normalise(requirement.name)
            installed = version_of(requirement.name)
            if installed is None:
                problems.append(f"{requirement.name} is not installed ({name} needs "
                                f"{requirement})")
            elif not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{requirement.name} {installed} does not satisfy {requirement} "
                                f"(needed by {name})")
            if key not in seen and installed is not None:
                seen.add(key)
                queue.append(requirement.name)


def check_project_modules(problems: list[str]) -> int:
    """Import every vidcom2_cli module; returns how many imported."""
    import vidcom2_cli

    count = 0
    for module in pkgutil.walk_packages(vidcom2_cli.__path__, "vidcom2_cli."):
        try:
            importlib.import_module(module.name)
            count += 1
        except Exception as error:
            problems.append(f"import {module.name}: {type(error).__name__}: {error}")
    return count


def package_digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every Python and preset file of a vidcom2_cli folder."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for pattern in ("*.py", "*.json") for path in folder.rglob(pattern)}


def check_installed_matches_source(problems: list[str]) -> str:
    """Where vidcom2_cli was imported from; a problem when that is an installed copy (a
    carried wheel) that differs from this tree's src/, i.e. a wheel built before the last
    change."""
    import vidcom2_cli

    installed = Path(vidcom2_cli.__file__).resolve().parent
    if installed != SOURCE and SOURCE.is_dir():
        differing = sorted(name for name, digest in package_digests(SOURCE).items()
                           if package_digests(installed).get(name) != digest)
        if differing:
            problems.append(f"the installed vidcom2_cli ({installed}) differs from src/ in "
                            f"{len(differing)} file(s), e.g. {differing[0]}: rebuild the wheel "
                            "(scripts/gpu_prepare.sh)")
    return str(installed)


def gpu_details() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {}
    properties = torch.cuda.get_device_properties(0)
    details: dict[str, Any] = {
        "name": properties.name, "count": torch.cuda.device_count(),
        "memory_bytes": properties.total_memory,
        "capability": f"{properties.major}.{properties.minor}",
        "multiprocessors": properties.multi_processor_count, "driver": None}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30, check=False)
        details["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else None
    return details


def describe(require_cuda: bool) -> dict[str, Any]:
    problems: list[str] = []
    versions = check_requirements(problems)
    import torch

    from vidcom2_cli.models.loading import flash_attention_2_installed

    modules = check_project_modules(problems)
    imported_from = check_installed_matches_source(problems)
    gpu = gpu_details()
    if require_cuda and not gpu:
        problems.append("torch sees no CUDA device")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "executable": sys.executable,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": gpu, "flash_attention_2": flash_attention_2_installed(),
        "versions": versions, "project_modules_imported": modules,
        "project_imported_from": imported_from, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the description here")
    parser.add_argument("--require-cuda", action="store_true",
                        help="count a missing GPU as a problem")
    args = parser.parse_args()
    details = describe(args.require_cuda)
    text = json.dumps(details, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    for problem in details["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    sys.exit(1 if details["problems"] else 0)


if __name__ == "__main__":
    main()
