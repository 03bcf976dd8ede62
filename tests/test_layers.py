"""The import layering of docs/design.md, on the real import graph.

CI checks the whole contract with ``lint-imports`` (``pyproject.toml``); these tests pin the
parts that were once broken, and name the offending imports when they break again.
"""

from __future__ import annotations

from typing import Any

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with the test extra (import-linter)")


@pytest.fixture(scope="module")
def graph() -> Any:
    return grimp.build_graph("buttress", cache_dir=None)


def _imports(graph: Any, importer: str, imported: str) -> list[str]:
    found = []
    for expression in (f"{importer}.** -> {imported}.**", f"{importer}.** -> {imported}"):
        found += graph.find_matching_direct_imports(import_expression=expression)
    return sorted(f"{i['importer']} -> {i['imported']}" for i in found)


@pytest.mark.parametrize("upper", ["buttress.policies", "buttress.degradation", "buttress.cli"])
def test_instrumentation_does_not_import_upward(graph: Any, upper: str) -> None:
    # Metrics read the breakers and managers through buttress.events readings instead.
    assert _imports(graph, "buttress.instrumentation", upper) == []


@pytest.mark.parametrize(
    "core",
    ["buttress.policies", "buttress.backends", "buttress.degradation", "buttress.machines"],
)
def test_the_core_does_not_import_instrumentation(graph: Any, core: str) -> None:
    assert _imports(graph, core, "buttress.instrumentation") == []
