"""Sphinx helpers of the pyro_ssvi documentation.

* ``.. ssvi-api:: MODULE`` documents every name of ``MODULE.__all__``: a name
  is described once, on the page of the deepest public module that lists it
  (where it is defined); the other modules that re-export it link there. A
  public class, function or constant without documentation is a build warning
  (so ``sphinx -W`` fails), and so is a public module without a page.
* ``.. ssvi-cli:: [COMMAND]`` is the ``--help`` text of ``pyro-ssvi``
  (``COMMAND``: ``train``, ``evaluate`` or ``compare``), taken from the parser
  at build time, so the page cannot drift from the command.
* The committed notebooks (``notebooks/*.ipynb``) are copied into
  ``docs/notebooks/`` (ignored by git) before the build reads its sources, so
  the rendered pages are the committed files.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import shutil
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

PACKAGE = "pyro_ssvi"
REPO = Path(__file__).resolve().parents[2]


def public_modules(package: str = PACKAGE) -> list[str]:
    """Every module of ``package`` with no ``_``-prefixed part in its name and
    an ``__all__`` (the package itself included), sorted."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(n for n in names if hasattr(importlib.import_module(n), "__all__"))


def _is_prefix(module: str, of: str) -> bool:
    return of == module or of.startswith(module + ".")


def _submodules(module: str) -> list[str]:
    """``module`` and, for a package, its private submodules (where a public
    name may be defined and re-exported)."""
    mod = importlib.import_module(module)
    found = [module]
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), module + "."):
        last = info.name.rsplit(".", 1)[1]
        if last.startswith("_") and last != "__main__":
            found.append(info.name)
    return found


def attribute_doc(module: str, name: str) -> list[str]:
    """The ``#:`` comment lines of a module-level constant, looked up in
    ``module`` and then in its private submodules (``[]`` when there are
    none)."""
    for candidate in _submodules(module):
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # a compiled or source-less module: no comments
            continue
        lines = docs.get(("", name))
        if lines and any(line.strip() for line in lines):
            return list(lines)
    return []


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj):
        return "function"
    return "data"


def canonical_homes(modules: list[str]) -> dict[tuple[str, str], str]:
    """``{(module, name): module that describes it}`` over the public names.

    A class or function is described in the deepest listing module that
    contains its ``__module__``; a constant in the deepest listing module whose
    source (or a private submodule's) documents it with a ``#:`` comment, else
    in the deepest listing module.
    """
    listed: dict[tuple[str, str], list[str]] = {}
    for module in modules:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            key = (_kind(obj), name, id(obj) if _kind(obj) != "data" else 0)
            listed.setdefault(key, []).append(module)  # type: ignore[arg-type]
    homes: dict[tuple[str, str], str] = {}
    for (kind, name, _), where in listed.items():
        deepest = sorted(where, key=lambda m: (m.count("."), m))
        obj = getattr(importlib.import_module(where[0]), name)
        home = deepest[-1]
        if kind != "data":
            owners = [m for m in deepest if _is_prefix(m, obj.__module__)]
            home = owners[-1] if owners else home
        else:
            owners = [m for m in deepest if attribute_doc(m, name)]
            home = owners[-1] if owners else home
        for module in where:
            homes[(module, name)] = home
    return homes


_HOMES: dict[tuple[str, str], str] = {}


def homes() -> dict[tuple[str, str], str]:
    if not _HOMES:
        _HOMES.update(canonical_homes(public_modules()))
    return _HOMES


def undocumented(module: str) -> list[str]:
    """The names of ``module.__all__`` with no docstring (classes, functions)
    or no ``#:`` comment (constants), where they are described."""
    mod = importlib.import_module(module)
    missing = []
    for name in mod.__all__:
        home = homes().get((module, name), module)
        if home != module:
            continue
        obj = getattr(mod, name)
        if _kind(obj) == "data":
            if not attribute_doc(module, name):
                missing.append(name)
        elif not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
    return missing


def api_lines(module: str) -> list[str]:
    """The reST that documents ``module``: its docstring, then each public
    name described here, then links to those described elsewhere."""
    mod = importlib.import_module(module)
    lines = [f".. automodule:: {module}", "   :no-members:", ""]
    lines += [f".. py:currentmodule:: {module}", ""]
    elsewhere = []
    for name in mod.__all__:
        home = homes().get((module, name), module)
        if home != module:
            elsewhere.append((name, home))
            continue
        obj = getattr(mod, name)
        kind = _kind(obj)
        if kind == "class":
            foreign = sorted(  # their members: Pyro's and torch's docs
                {
                    c.__name__
                    for c in obj.__mro__
                    if not c.__module__.startswith("pyro_ssvi")
                }
            )
            lines += [
                f".. autoclass:: {module}.{name}",
                "   :members:",
                f"   :inherited-members: {', '.join(foreign)}",
                "   :show-inheritance:",
                "",
            ]
        elif kind == "function":
            lines += [f".. autofunction:: {module}.{name}", ""]
        else:
            lines += [f".. py:data:: {name}"]
            if isinstance(obj, (str, int, float, bool)):
                lines += [f"   :value: {obj!r}"]
            else:
                lines += [f"   :type: {type(obj).__name__}"]
            lines += [""]
            lines += ["   " + line for line in attribute_doc(module, name)]
            lines += [""]
    if elsewhere:
        lines += ["Also importable from here (each described where it is defined):", ""]
        for name, home in elsewhere:
            lines += [f"* :py:obj:`{name} <{home}.{name}>` (``{home}``)"]
        lines += [""]
    return lines


class ApiDirective(SphinxDirective):
    """``.. ssvi-api:: MODULE``: the API reference of one public module."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        self.env.note_dependency(__file__)
        pages = getattr(self.env, "ssvi_api_pages", {})
        pages[module] = self.env.docname
        self.env.ssvi_api_pages = pages  # type: ignore[attr-defined]
        for name in undocumented(module):
            logger.warning(
                f"{module}.{name} is public (in __all__) but has no "
                "documentation; add a docstring (or a '#:' comment above a "
                "constant)",
                location=self.get_location(),
            )
        node = nodes.section()
        node.document = self.state.document
        content = StringList(api_lines(module), source=f"<ssvi-api {module}>")
        nested_parse_with_titles(self.state, content, node)
        return node.children


def cli_help(command: str | None = None) -> str:
    """The ``--help`` text of ``pyro-ssvi`` or of one of its commands, at a
    width of 88 columns."""
    from pyro_ssvi.app.cli import build_parser

    argv = [command, "--help"] if command else ["--help"]
    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


class CliDirective(SphinxDirective):
    """``.. ssvi-cli:: [COMMAND]``: ``pyro-ssvi [COMMAND] --help``."""

    optional_arguments = 1
    option_spec = {"class": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0] if self.arguments else None
        text = cli_help(command)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def copy_notebooks(app: Sphinx) -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/notebooks/`` (unchanged files
    keep their time stamps, so an incremental build skips them)."""
    source = REPO / "notebooks"
    target = Path(app.srcdir) / "notebooks"
    target.mkdir(exist_ok=True)
    wanted = {p.name for p in source.glob("*.ipynb")}
    for stale in target.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for path in sorted(source.glob("*.ipynb")):
        dest = target / path.name
        if not dest.exists() or dest.read_bytes() != path.read_bytes():
            shutil.copy2(path, dest)


def check_api_pages(app: Sphinx, env: Any) -> None:
    """Warn about a public module that no ``ssvi-api`` directive documents."""
    pages = getattr(env, "ssvi_api_pages", {})
    for module in public_modules():
        if module not in pages:
            logger.warning(
                f"public module {module} has no API page; add "
                f"docs/api/{module}.md with '.. ssvi-api:: {module}'"
            )


def merge_pages(app: Sphinx, env: Any, docnames: Any, other: Any) -> None:
    pages = getattr(env, "ssvi_api_pages", {})
    pages.update(getattr(other, "ssvi_api_pages", {}))
    env.ssvi_api_pages = pages


def purge_pages(app: Sphinx, env: Any, docname: str) -> None:
    pages = getattr(env, "ssvi_api_pages", {})
    env.ssvi_api_pages = {m: d for m, d in pages.items() if d != docname}


def split_attribute_groups(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Before napoleon reads a docstring: an "Attributes:" entry naming
    several attributes (``lr, momentum: ...``) becomes one entry per name with
    the same description, as napoleon's fields take one name each (it does so
    for "Args:" itself)."""
    out: list[str] = []
    section: int | None = None  # indentation of the "Attributes:" line
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        i += 1
        if line.strip() == "Attributes:":
            section = indent
            out.append(line)
            continue
        if section is not None and line.strip() and indent <= section:
            section = None
        head, sep, rest = line.strip().partition(":")
        names = head.split(", ")
        if section is None or not sep or len(names) < 2:
            out.append(line)
            continue
        if not all(part.isidentifier() for part in names):
            out.append(line)
            continue
        body = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        for part in names:
            out += [" " * indent + f"{part}:{rest}", *body]
    lines[:] = out


def _home_of(target: str) -> str | None:
    """The described name for a reference to a re-exported or short name:
    ``pyro_ssvi.SparseSVI`` -> ``pyro_ssvi.svi.SparseSVI``, ``SparseSVI`` ->
    the same (when exactly one module describes a public ``SparseSVI``)."""
    parts = target.split(".")
    for i in range(1, len(parts)):
        module, name, rest = ".".join(parts[:i]), parts[i], parts[i + 1 :]
        home = homes().get((module, name))
        if home is not None:
            return ".".join([home, name, *rest])
    found = {home for (_, name), home in homes().items() if name == parts[0]}
    if len(found) == 1:
        return ".".join([found.pop(), *parts])
    return None


def resolve_reexports(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python reference to a public name by where it is described
    (so a docstring may name ``pyro_ssvi.SparseSVI`` as users import it)."""
    if node.get("refdomain") != "py":
        return None
    target = _home_of(node["reftarget"])
    if target is None or target == node["reftarget"]:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ssvi-api", ApiDirective)
    app.add_directive("ssvi-cli", CliDirective)
    app.connect("builder-inited", copy_notebooks)
    app.connect("env-purge-doc", purge_pages)
    app.connect("env-merge-info", merge_pages)
    app.connect("env-check-consistency", check_api_pages)
    app.connect("missing-reference", resolve_reexports)
    app.connect("autodoc-process-docstring", split_attribute_groups, priority=400)
    return {"version": "1", "parallel_read_safe": True}
