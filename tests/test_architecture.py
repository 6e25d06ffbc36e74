"""The layers of ARCHITECTURE.md, where import-linter cannot see them: the loads by name.

`lint-imports` (pyproject.toml's contracts, run by CI) checks every import statement, those
inside functions included. Two tables load modules from strings instead: cli.COMMANDS (a
command's module is imported only when that command runs) and the package's lazy exports in
__init__.py. These tests hold them to the same rules, and check that importing the package or
the CLI does not import Paddle (it reads OMP_NUM_THREADS once, at its own import).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mobilebert_paddle
from mobilebert_paddle import cli

# The order of ARCHITECTURE.md and of pyproject.toml's layers contract, top first.
LAYERS = ("cli", "tools", "pretraining", "training", "inference", "tasks", "model", "core")


def layer_of(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_loads_by_name_from_a_layer_below_the_cli(name):
    command = cli.COMMANDS[name]
    assert layer_of(command.module) in LAYERS[1:], command.module
    module = importlib.import_module(command.module)
    assert callable(getattr(module, command.add_arguments)) and callable(getattr(module, command.run))


@pytest.mark.parametrize("name", mobilebert_paddle.__all__)
def test_the_package_exports_come_from_the_model_layer(name):
    module = f"mobilebert_paddle.{mobilebert_paddle._EXPORTS[name]}"
    assert layer_of(module) == "model", module
    assert getattr(mobilebert_paddle, name) is getattr(importlib.import_module(module), name)


def test_every_subpackage_init_is_empty():
    """Importing a package must not import its modules (nor Paddle, through them)."""
    for layer in LAYERS[1:]:
        package = importlib.import_module(f"mobilebert_paddle.{layer}")
        source = open(package.__file__, encoding="utf-8").read()
        assert source.strip() == "", f"{package.__file__} is not empty"


def test_the_package_and_the_cli_do_not_import_paddle():
    code = ("import sys, mobilebert_paddle, mobilebert_paddle.cli, mobilebert_paddle.core.flags; "
            "print(sorted(name for name in ('paddle', 'torch', 'transformers') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_layers_contract_names_every_package():
    """A new package must be placed in the layers, or lint-imports would not check it."""
    import pkgutil

    packages = {info.name for info in pkgutil.iter_modules(mobilebert_paddle.__path__) if info.ispkg}
    assert packages == set(LAYERS[1:])
    try:
        import tomllib
    except ImportError:          # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    layers = next(contract["layers"] for contract in contracts if contract["type"] == "layers")
    assert [layer.split(".")[1] for layer in layers] == list(LAYERS)
