"""The device has no training stack: `python -m deploy` must work where `import torch` fails."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Installs an import hook that makes the training stack unimportable, then runs the CLI as `python -m deploy`.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = ("torch", "torchvision", "pytorch_lightning", "lightning", "lightning_modules", "datamodules",
           "callbacks", "albumentations", "main", "cli", "training")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the device has no training stack")
sys.meta_path.insert(0, Block())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was importable: the test setup is broken")
sys.argv = ["deploy"] + sys.argv[1:]
try:
    runpy.run_module("deploy", run_name="__main__", alter_sys=True)
finally:
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        print("leaked:", leaked, file=sys.stderr)
"""


def run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_infer_runs_where_torch_cannot_be_imported(digits_bundle):
    result = run_without_torch("infer", "--bundle", digits_bundle.path, "--topk", "1", *digits_bundle.image_paths[:5])
    assert result.returncode == 0, result.stderr
    assert "leaked" not in result.stderr
    predicted = [json.loads(line)["top"][0]["index"] for line in result.stdout.splitlines()]
    assert predicted == digits_bundle.torch_logits[:5].argmax(1).tolist()


def test_every_deploy_module_imports_without_torch():
    # every module of the package, found by walking it: a module added to deploy/ is checked without a list to extend
    code = BLOCKED_RUN.split("sys.argv")[0] + (
        "import importlib, pkgutil, deploy\n"
        "names = sorted(m.name for m in pkgutil.walk_packages(deploy.__path__, 'deploy.'))\n"
        "for name in names:\n    importlib.import_module(name)\n"
        "print(len(names), 'imported')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count = sum(1 for root, _, files in os.walk(os.path.join(REPO, "deploy")) if "__pycache__" not in root
                for name in files if name.endswith(".py") and name != "__init__.py")
    assert result.stdout.split() == [str(count + 1), "imported"], result.stdout  # + deploy.runtimes itself


def test_no_deploy_file_imports_torch_and_the_executorch_runtime_comes_as_the_packages_plugin():
    """deploy/ names torch nowhere, not even inside a function: ExecuTorch's runner, whose Python API needs torch,
    is torch_runtimes' plugin, which an in-process registry lookup finds as `python -m deploy` does."""
    import re
    from pathlib import Path

    importing = [f"{path.relative_to(REPO)}:{n}" for path in Path(REPO, "deploy").rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*(import torch\b|from torch\b)", line)]
    assert not importing, importing
    probe = ("import deploy.runtimes\nfrom deploy.registry import format_spec, runtime_spec\n"
             "print(format_spec('pte').default_runtime, runtime_spec('executorch').name)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["executorch", "executorch"], result.stderr[-2000:]
