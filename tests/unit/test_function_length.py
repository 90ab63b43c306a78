"""The house rule: no function in services/, libs/ or tools/ longer than 60 lines, unless the line
before it says why (a comment starting with `# long:`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def too_long(source: str) -> list[tuple[str, int]]:
    """(name, lines) of each function over MAX_LINES without a `# long:` reason above it."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        above = lines[start - 2].strip() if start >= 2 else ""
        if length > MAX_LINES and not above.startswith("# long:"):
            found.append((node.name, length))
    return found


def test_a_long_function_is_found_and_a_reason_lets_it_be() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    assert too_long(f"def f():\n{body}") == [("f", MAX_LINES + 1)]
    assert too_long(f"# long: one table of cases, clearer in one piece\ndef f():\n{body}") == []
    assert too_long("def g():\n    return 1\n") == []


def test_no_function_in_the_product_is_over_60_lines_without_a_reason() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{name} ({length} lines)"
        for folder in ("services", "libs", "tools")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name, length in too_long(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "split these or say why above them (# long: ...):\n" + "\n".join(
        offenders
    )
