"""docs/architecture.md is the stage map of the code: every module is on it."""
import ast

from helpers import REPO

DOC = (REPO / "docs" / "architecture.md").read_text()


def modules() -> list[str]:
    """Every module under bacl/, baselines/ and analysis/; a package __init__ only if it defines something."""
    found = []
    for package in ("bacl", "baselines", "analysis"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "__init__.py":
                tree = ast.parse(path.read_text())
                if not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign)) for n in tree.body):
                    continue
            found.append(path.relative_to(REPO).as_posix())
    return found


def test_every_module_is_on_the_stage_map():
    assert len(modules()) > 40
    missing = [m for m in modules() if f"`{m}`" not in DOC]
    assert not missing, f"add these modules to docs/architecture.md: {missing}"


def test_the_map_names_no_module_that_does_not_exist():
    import re
    named = set(re.findall(r"`((?:bacl|baselines|analysis|experiments)/[\w/]+\.py)`", DOC))
    assert named and not [m for m in named if not (REPO / m).exists()]
