"""The public surface: ``__all__`` against the README, the submodules, and the error tree."""

from __future__ import annotations

import builtins
import importlib
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import buttress
from buttress import errors

README = Path(__file__).resolve().parent.parent / "README.md"
_CODE = re.compile(r"`([^`]+)`")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bullets(text: str) -> list[str]:
    """The bullet items of ``text``, each joined onto one line."""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("* "):
            items.append(line[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def _public_api_section() -> tuple[list[str], list[str]]:
    """The README's "Public API" bullets: (top-level groups, submodules)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Public API\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    top, _, submodules = section.partition("\nSubmodules")
    return _bullets(top), _bullets(submodules)


def documented_top_level() -> list[str]:
    names: list[str] = []
    for item in _public_api_section()[0]:
        _, _, listed = item.partition(": ")
        names += [n for n in _CODE.findall(listed) if _IDENTIFIER.fullmatch(n)]
    return names


def documented_submodules() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in _public_api_section()[1]:
        head, _, listed = item.partition(": ")
        (module,) = _CODE.findall(head)
        out[module] = [n for n in _CODE.findall(listed) if re.fullmatch(r"[\w.]+", n)]
    return out


def test_readme_lists_exactly_all() -> None:
    documented = documented_top_level()
    assert len(documented) == len(set(documented)), "a name is listed twice in the README"
    assert sorted(set(documented) - set(buttress.__all__)) == [], "documented, not exported"
    assert sorted(set(buttress.__all__) - set(documented)) == [], "exported, not documented"


def test_every_name_in_all_is_importable_from_a_fresh_interpreter() -> None:
    # A fresh process: names other tests imported as a side effect cannot mask a missing one.
    code = "import buttress\nfor n in buttress.__all__:\n    getattr(buttress, n)\n"
    code += "exec('from buttress import ' + ', '.join(buttress.__all__))\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_documented_submodules_hold_their_names() -> None:
    submodules = documented_submodules()
    assert {"buttress.http", "buttress.presets", "buttress.testing"} <= set(submodules)
    for module_name, names in submodules.items():
        module = importlib.import_module(module_name)
        assert names, module_name
        for dotted in names:
            owner = module
            *path, name = dotted.split(".")
            if path:
                owner = importlib.import_module(".".join([module_name, *path]))
            assert hasattr(owner, name), f"{module_name} documents {dotted}, which is missing"


@pytest.mark.parametrize(
    ("module_name", "names"),
    [
        (
            "buttress.http",
            ["RateLimitInfo", "parse_retry_after", "raise_for_rate_limit", "rate_limit_info"],
        ),
        ("buttress.presets", ["OperationProfile", "preset"]),
    ],
)
def test_submodules_are_the_same_objects_as_the_top_level(
    module_name: str, names: list[str]
) -> None:
    module = importlib.import_module(module_name)
    assert set(names) <= set(module.__all__)
    for name in names:
        assert getattr(module, name) is getattr(buttress, name)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names a missing {name}"


def test_submodules_import_on_their_own() -> None:
    code = (
        "from buttress.http import parse_retry_after\n"
        "from buttress.presets import preset\n"
        "assert parse_retry_after(5) == 5.0\n"
        "assert preset('erp_api').timeout == 10.0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


TREE = [
    ("RejectedError", "ButtressError"),
    ("CircuitOpenError", "RejectedError"),
    ("BulkheadFull", "RejectedError"),
    ("RateLimitExceeded", "RejectedError"),
    ("ServiceDegraded", "RejectedError"),
    ("StorageError", "ButtressError"),
    ("StorageUnavailable", "ButtressError"),
    ("OperationTimeout", "ButtressError"),
    ("OperationTimeout", "TimeoutError"),
    ("UnknownRateLimit", "ButtressError"),
    ("UnknownRateLimit", "KeyError"),
    ("AllTargetsCooling", "RejectedError"),
]


@pytest.mark.parametrize(("child", "parent"), TREE)
def test_the_error_tree(child: str, parent: str) -> None:
    base = getattr(buttress, parent, None) or getattr(builtins, parent)
    assert issubclass(getattr(buttress, child), base)


def test_the_docstring_draws_every_error() -> None:
    doc = errors.__doc__ or ""
    for name in [*errors.__all__, "TimeoutError", "KeyError"]:
        assert re.search(rf"\b{name}\b", doc), f"errors.py's docstring does not show {name}"


def test_unknown_rate_limit_is_a_buttress_error_and_a_key_error() -> None:
    limiter = buttress.RateLimiter()
    with pytest.raises(buttress.ButtressError) as info:
        limiter.check_limit("never-configured")
    error = info.value
    assert isinstance(error, KeyError)
    assert isinstance(error, buttress.UnknownRateLimit)
    assert "never-configured" in str(error)
    assert not str(error).startswith(("'", '"'))  # not KeyError's quoted repr
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is buttress.UnknownRateLimit
    assert str(copy) == str(error)
    assert str(buttress.UnknownRateLimit()) == "unknown rate limit"
