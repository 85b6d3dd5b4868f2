"""House rule: SQL lives in repositories and migrations. A call of SQLAlchemy's `select`, `text`,
`insert`, `update` or `delete` anywhere else in production code fails this test, naming the file
and line. A repository is a `repository.py` / `*_repository.py` module, a `repositories/` package,
or a class named `*Repository` (some features keep their small repository beside its one user). Found by syntax (imports bound from `sqlalchemy`, `sqlalchemy.dialects.*`, or module
aliases such as `sa.select(`), so comments and strings never count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "shared" / "src", *sorted((ROOT / "services").glob("*/src"))]
SQL_BUILDERS = frozenset({"select", "text", "insert", "update", "delete"})

# Where SQL may be: a repository module (or a package of them) and Alembic migrations.
ALLOWED_PARTS = frozenset({"migrations", "repositories"})
_DDL = "table metadata: text() is a DDL fragment (a server default, a partial index's WHERE), not a query"
# Justified exceptions: file -> (the builders it may call, why). Keep it short; prefer a repository.
EXCEPTIONS: dict[str, tuple[frozenset[str], str]] = {
    "services/account-api/src/account_api/tables.py": (frozenset({"text"}), _DDL),
    "services/account-api/src/account_api/legacy_tables.py": (
        frozenset({"text"}),
        _DDL,
    ),
    "services/migrator/src/migrator/source.py": (
        frozenset({"text"}),
        "the migrator's read-only adapter over the legacy database (SQLite or any SQLAlchemy"
        " URL): it is that database's repository, and text() runs its SELECTs on a"
        " SQLAlchemy connection",
    ),
}


def _allowed(path: Path, name: str) -> bool:
    if path.stem == "repository" or path.stem.endswith("_repository"):
        return True
    if ALLOWED_PARTS & set(path.parts):
        return True
    builders, _why = EXCEPTIONS.get(
        path.relative_to(ROOT).as_posix(), (frozenset(), "")
    )
    return name in builders


def sql_calls(source: str) -> list[tuple[int, str]]:
    """(line, name) of each SQLAlchemy statement-builder call in `source`, outside any class
    named `*Repository`."""
    tree = ast.parse(source)
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and cls.name.endswith("Repository"):
            cls.body = []  # a repository's own SQL is where it belongs
    builders: set[str] = set()  # local names bound to a builder function
    modules: set[str] = set()  # local names bound to a sqlalchemy module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "sqlalchemy"
        ):
            for alias in node.names:
                if alias.name in SQL_BUILDERS:
                    builders.add(alias.asname or alias.name)
                elif alias.name in {"sql", "postgresql", "expression", "dialects"}:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    modules.add(alias.asname or "sqlalchemy")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in builders:
            found.append((node.lineno, func.id))
        elif isinstance(func, ast.Attribute) and func.attr in SQL_BUILDERS:
            base = func.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append((node.lineno, func.attr))
    return found


def test_sql_is_written_only_in_repositories_and_migrations() -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line}: {name}(...)"
        for src in SOURCES
        for path in sorted(src.rglob("*.py"))
        for line, name in sql_calls(path.read_text(encoding="utf-8"))
        if not _allowed(path, name)
    ]
    assert not offences, "SQL outside a repository or migration:\n" + "\n".join(
        offences
    )


def test_every_listed_exception_still_exists() -> None:
    assert [p for p in EXCEPTIONS if not (ROOT / p).is_file()] == []


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select\nselect(1)",
        "from sqlalchemy import text as t\nt('SELECT 1')",
        "from sqlalchemy.dialects.postgresql import insert\ninsert(T)",
        "import sqlalchemy as sa\nsa.update(T)",
        "from sqlalchemy import select\nclass Reports:\n    Q = select(1)",
        "from sqlalchemy import sql\nsql.expression.delete(T)",
    ],
)
def test_the_check_sees_each_way_of_writing_a_statement(source: str) -> None:
    assert len(sql_calls(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import func\nfunc.count()",
        "text('not sqlalchemy')",
        "items.update({})\nsession.delete(row)",
        "# select(x) in a comment\n'select(x) in a string'",
        "from sqlalchemy import text\nclass QuotaRepository:\n    Q = text('SELECT 1')",
    ],
)
def test_the_check_ignores_what_is_not_sqlalchemy_sql(source: str) -> None:
    assert sql_calls(source) == []
