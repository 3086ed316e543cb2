"""The hub's packages depend one way (docs/hub-internals.md, "Packages"), and the
three programs and ``protocol`` keep to their own (design.md: ``protocol``
imports none of them; the kiosk talks to the agent over its local API).

Read from the source with ``ast``, every import (also inside functions and
``TYPE_CHECKING`` blocks): a new arrow against the order fails here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: A hub package may import those at its own rank or lower, never higher.
HUB_RANK = {
    "hub.storage": 0,
    # A line logged once an hour per key, and the station notes' counter.
    "hub.log_once": 0,
    "hub.config": 1,
    "hub.fleet": 2,
    "hub.mqtt": 3,
    "hub.alerting": 3,
    "hub.public": 3,
    "hub.reports": 3,
    "hub.http": 4,
    "hub.console": 4,
    "hub.service": 5,
    # `yizhan sim month`: a whole Hub driven through simulated months (a tool).
    "hub.simulate": 6,
}
#: Packages that may depend on each other at one rank: none.
SAME_RANK_APART = {("hub.mqtt", "hub.alerting"), ("hub.alerting", "hub.mqtt"),
                   ("hub.http", "hub.console")}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = ".".join(path.relative_to(REPO).with_suffix("").parts)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            out.append((node.lineno, base))
            # ``from hub import x``: the module imported is hub.x
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if base == "hub"]
    return out


def package_of(module: str) -> str | None:
    for pkg in sorted(HUB_RANK, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return None


def sources(top: str) -> list[Path]:
    return sorted((REPO / top).rglob("*.py"))


def hub_arrows() -> list[tuple[str, str, str]]:
    """(file:line, from package, to package) of every import across hub packages."""
    arrows = []
    for path in sources("hub"):
        rel = path.relative_to(REPO)
        mine = package_of(".".join(rel.with_suffix("").parts))
        if mine is None:
            continue  # hub/__init__.py
        for line, module in imports(path):
            theirs = package_of(module)
            if theirs is not None and theirs != mine:
                arrows.append((f"{rel}:{line}", mine, theirs))
    return arrows


def test_every_hub_module_is_in_a_package_of_the_order():
    loose = [str(p.relative_to(REPO)) for p in sources("hub")
             if p.name != "__init__.py" or p.parent.name != "hub"
             if package_of(".".join(p.relative_to(REPO).with_suffix("").parts)) is None]
    assert loose == [], "add these to HUB_RANK and docs/hub-internals.md"


def test_hub_packages_depend_one_way():
    against = [f"{where}: {mine} imports {theirs}" for where, mine, theirs in hub_arrows()
               if HUB_RANK[theirs] > HUB_RANK[mine] or (mine, theirs) in SAME_RANK_APART]
    assert against == []


@pytest.mark.parametrize(("top", "forbidden"), [
    ("protocol", ("firmware", "hub", "kiosk", "yizhan.cli", "yizhan.demo")),
    ("firmware", ("hub", "kiosk")),
    ("hub", ("firmware", "kiosk")),
    ("kiosk", ("hub", "firmware")),
])
def test_programs_keep_to_their_own(top, forbidden):
    found = [f"{p.relative_to(REPO)}:{line}: {module}" for p in sources(top)
             for line, module in imports(p)
             if any(module == f or module.startswith(f + ".") for f in forbidden)]
    assert found == []
