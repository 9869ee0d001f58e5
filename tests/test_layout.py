"""The layout's rules (docs/ARCHITECTURE.md), read from the imports of every module with ``ast``: the
protocol package stands alone, ingestion and indexing meet only in the pipeline contract, the dashboard
reads through selectors, the benchmarks use the harness and not the tests, and no two top-level packages
import each other."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "pipeline", "firehose", "relaysim", "identity", "appview", "xrpc", "dashboard", "config",
            "harness", "bench", "tests")
# The project packages each top-level package may import, besides itself.
ALLOWED = {
    "protocol": set(),
    "pipeline": {"protocol"},
    "firehose": {"protocol", "pipeline"},
    "relaysim": {"protocol"},
    "identity": {"protocol"},
    "appview": {"protocol", "pipeline", "identity"},
    "xrpc": {"protocol", "pipeline", "appview"},
    "dashboard": {"pipeline", "appview"},
    "config": {"dashboard", "xrpc"},
    "harness": {"protocol", "pipeline"},
    "bench": {"protocol", "pipeline", "identity", "appview", "xrpc", "relaysim", "harness"},
    "tests": set(PACKAGES) - {"bench"},
}
# Outside libraries a package must not use.
FORBIDDEN_LIBRARIES = {"protocol": {"django", "redis", "channels", "rest_framework", "psycopg", "daphne"}}
# The only way the dashboard reaches the index.
DASHBOARD_READS = "appview.selectors"


def modules() -> list[Path]:
    found = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if "migrations" not in path.parts]
    assert len(found) > 50, f"only {len(found)} modules found under {ROOT}"
    return found


def imported_names(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, at any depth (imports inside
    functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


IMPORTS = {path: imported_names(path) for path in modules()}


@pytest.mark.parametrize("package", PACKAGES)
def test_it_keeps_each_package_to_the_packages_it_may_import(package: str) -> None:
    broken = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in IMPORTS.items() if package_of(path) == package
        for name in names
        if (top := name.split(".")[0]) in PACKAGES and top != package and top not in ALLOWED[package]
    )
    assert not broken, "\n".join(broken)


def test_it_keeps_the_protocol_package_free_of_django_redis_and_databases() -> None:
    forbidden = FORBIDDEN_LIBRARIES["protocol"]
    broken = sorted(f"{path.relative_to(ROOT)} imports {name}" for path, names in IMPORTS.items()
                    if package_of(path) == "protocol" for name in names if name.split(".")[0] in forbidden)
    assert not broken, "\n".join(broken)


def test_it_has_the_dashboard_read_the_index_through_selectors_only() -> None:
    broken = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in IMPORTS.items() if package_of(path) == "dashboard"
        for name in names
        if name.split(".")[0] == "appview" and not (name + ".").startswith(DASHBOARD_READS + ".")
        and name != "appview"
    )
    assert not broken, "\n".join(broken)


def test_it_has_no_import_cycle_between_top_level_packages() -> None:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for path, names in IMPORTS.items():
        source = package_of(path)
        graph[source] |= {top for name in names if (top := name.split(".")[0]) in PACKAGES and top != source}

    def cycle_from(start: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        for target in sorted(graph[start]):
            if target in trail:
                return (*trail[trail.index(target):], target)
            found = cycle_from(target, (*trail, target))
            if found:
                return found
        return None

    cycles = [cycle for package in PACKAGES if (cycle := cycle_from(package, (package,)))]
    assert not cycles, " -> ".join(cycles[0])


def test_it_finds_a_rule_break_when_one_is_there(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text("import django\n\ndef late():\n    from appview.indexing import worker\n")
    assert imported_names(module) >= {"django", "appview.indexing", "appview.indexing.worker"}


def test_it_describes_every_top_level_package_in_the_architecture_table() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)
    missing = [row for row in rows if not (ROOT / row).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names paths the tree lacks: {missing}"
    assert {row.split("/")[0] for row in rows} == set(PACKAGES)
