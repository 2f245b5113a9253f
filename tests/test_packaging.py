"""What the package declares matches what its code needs."""

import ast
import configparser
import re
from pathlib import Path


ROOT = Path(__file__).parents[1]
# Possessive quantifiers and atomic groups: Python 3.11's `re`, a syntax error before
PYTHON_3_11_REGEX = re.compile(r"(?:[*+?}]\+|\(\?>)")


def lowest_python() -> tuple[int, int]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lowest = re.search(r">=\s*3\.(\d+)", config["options"]["python_requires"])
    return 3, int(lowest.group(1))


def test_declared_python_can_compile_every_regex():
    needs = []
    for path in sorted((ROOT / "rewatch_trl").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and PYTHON_3_11_REGEX.search(node.value):
                needs.append(f"{path.name}:{node.lineno}")
    if needs:
        assert lowest_python() >= (3, 11), f"3.11-only regex syntax at {needs}"


def test_ruff_targets_the_lowest_declared_python():
    major, minor = lowest_python()
    assert f'target-version = "py{major}{minor}"' in (ROOT / "pyproject.toml").read_text()
