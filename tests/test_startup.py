"""What importing the model stack costs (issue 27, item 3): only torch and the light parts of
transformers. torchvision (which imports torch._dynamo and sympy, seconds on a busy CPU) and
transformers' per-family modules come with loading a model, which needs them; the refusals
checked between the engine's import and the load must not pay for them. Each case runs in a
fresh interpreter, since this process has imported everything already."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import vidcom2_cli

# Imported by transformers' image utilities (torchvision), by torchvision's ops and transformers'
# masking utilities (torch._dynamo), on first use of a model class (transformers.models scans its
# ~570 model folders), or by the processors (transformers.processing_utils).
HEAVY = ("torchvision", "torch._dynamo", "sympy", "transformers.models",
         "transformers.image_utils", "transformers.processing_utils",
         "transformers.modeling_utils", "transformers.masking_utils")
# Builds every family's processor for the random-weight presets: imported when one is built.
LOADS_PROCESSORS = {"vidcom2_cli.models.offline"}


def first_heavy_imports(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` in order in a fresh interpreter; for each that brings in a module of
    HEAVY, which ones (a module already brought in by an earlier one is not counted again)."""
    code = ("import importlib, json, sys\n"
            f"heavy, found = {HEAVY!r}, {{}}\n"
            "for name in sys.argv[1:]:\n"
            "    before = {m for m in heavy if m in sys.modules}\n"
            "    importlib.import_module(name)\n"
            "    new = [m for m in heavy if m in sys.modules and m not in before]\n"
            "    if new:\n"
            "        found[name] = new\n"
            "print(json.dumps(found))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_engine_imports_no_torchvision_and_no_model_family():
    assert first_heavy_imports(["vidcom2_cli.engine"]) == {}


def test_no_module_of_the_package_imports_them_but_the_offline_processors():
    modules = sorted(info.name for info in pkgutil.walk_packages(vidcom2_cli.__path__,
                                                                  "vidcom2_cli."))
    assert "vidcom2_cli.models.qwen_vl" in modules and "vidcom2_cli.engine" in modules
    light = [name for name in modules if name not in LOADS_PROCESSORS]
    assert first_heavy_imports(light) == {}


def test_the_offline_processors_still_bring_what_they_need():
    """The guard above can fail: the module that builds processors does import them."""
    found = first_heavy_imports(sorted(LOADS_PROCESSORS))
    assert "torchvision" in found["vidcom2_cli.models.offline"]
