"""The docs say what the code does: every function of schema mec is in docs/sql-api.md and has a
worked example in the README; every view of schema mec is named in the README."""

import re
from pathlib import Path


def _names(db, kind: str) -> list[str]:
    if kind == "function":
        sql = "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'mec'"
    else:
        sql = "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'mec' AND c.relkind = 'v'"
    return sorted(r[0] for r in db.execute(sql).fetchall())


def test_every_function_is_in_the_sql_reference(db, repo_root):
    doc = (repo_root / "docs" / "sql-api.md").read_text()
    functions = _names(db, "function")
    assert len(functions) >= 15
    missing = [f for f in functions if f"### `mec.{f}`" not in doc]
    assert not missing, f"regenerate docs/sql-api.md (scripts/dev/gen-sql-api-doc.py): {missing}"


def test_every_api_function_has_a_readme_example(db, repo_root):
    readme = (repo_root / "README.md").read_text()
    helpers = {"current_namespace", "current_account"}
    missing = [f for f in _names(db, "function")
               if f not in helpers and not re.search(rf"SELECT mec\.{f}\(", readme)]
    assert not missing, f"README.md lacks a worked example of {missing}"


def test_every_view_is_named_in_the_readme(db, repo_root):
    readme = (repo_root / "README.md").read_text()
    missing = [v for v in _names(db, "view") if f"mec.{v}" not in readme]
    assert not missing, f"README.md does not name the views {missing}"


# Files a document or a comment names must exist: a renamed module, a moved test or a deleted
# page otherwise leaves readers following a reference to nothing.
_NAMED_FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]*\w\.(?:rs|sql|md|py|sh|json|toml|spec|lua|pgbench|yaml|psql))(?![\w/-]|\.\w)")
_PLACEHOLDER = re.compile(r"(?:\bA--B\b|X\.Y\.Z|<|NN_|\bx\.|_x\.|\bfoo\b|\bexample\b)")
_SKIP_DIRS = {".git", "target", ".mec", "node_modules", "__pycache__"}


def _documents(root):
    for path in sorted(root.rglob("*")):
        if any(part in _SKIP_DIRS for part in path.relative_to(root).parts) or not path.is_file():
            continue
        if path.suffix in {".md", ".rs", ".sql", ".sh", ".py", ".toml", ".yaml", ".spec"} or path.name == "mec":
            yield path


def test_docs_and_comments_name_only_files_that_exist(repo_root):
    names = {p.name for p in repo_root.rglob("*") if not any(s in p.parts for s in _SKIP_DIRS)}
    missing = []
    for doc in _documents(repo_root):
        text = doc.read_text(errors="replace")
        if doc.parent.name == "sql" and doc.name.startswith("pg_mec--"):
            continue  # release scripts are kept as they shipped, comments and all
        if doc.suffix not in {".md"}:
            # Only comments and doc strings name files in code; string literals are code's own business.
            text = "\n".join(line for line in text.splitlines()
                             if line.lstrip().startswith(("//", "#", "--", "*", '"""')) or "//" in line)
        for m in _NAMED_FILE.finditer(text):
            name = m.group(1).rstrip(".")
            if _PLACEHOLDER.search(name) or name.startswith(("http", "www.", "../shared/")):
                continue  # a pattern, a URL, or the team's shared folder (not part of a clone)
            candidates = [repo_root / name, doc.parent / name]
            if any(c.exists() for c in candidates) or (("/" not in name) and name in names):
                continue
            # A path below a folder that exists, named from inside that folder (`src/ops/metering.rs`).
            if any(p.as_posix().endswith("/" + name) for p in repo_root.rglob(Path(name).name)
                   if not any(s in p.parts for s in _SKIP_DIRS)):
                continue
            missing.append(f"{doc.relative_to(repo_root)}: {name}")
    assert not missing, "documents and comments name files that do not exist:\n" + "\n".join(missing)


def test_docs_name_only_functions_and_tables_that_exist(db, repo_root):
    """Every `mec.f(` and `mec_data.t` a page names is installed (CONTRACT.md also lists what the
    issues plan, so it is left out)."""
    functions = set(_names(db, "function")) | set(_names(db, "view"))
    private = {r[0] for r in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'mec_data'"
        " UNION SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'mec_data'"
        " UNION SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'mec_data'")}
    pages = [repo_root / "README.md", repo_root / "bench" / "README.md",
             *sorted((repo_root / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        if page.name == "CONTRACT.md":
            continue
        text = page.read_text()
        missing += [f"{page.name}: mec.{f}" for f in re.findall(r"\bmec\.(\w+)\(", text)
                    if f not in functions and f != "fn"]  # mec.fn(…): a placeholder
        missing += [f"{page.name}: mec_data.{t}" for t in re.findall(r"\bmec_data\.(\w+)", text) if t not in private]
    assert not missing, "pages name functions or tables that are not installed:\n" + "\n".join(sorted(set(missing)))
