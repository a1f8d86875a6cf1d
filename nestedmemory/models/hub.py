"""Model folders that load without this package: ``from_pretrained(folder, trust_remote_code=True)``.

:meth:`NestedMemoryConfig.save_pretrained` (so ``model.save_pretrained`` and every training checkpoint) calls
:func:`save_code`: it writes, beside ``config.json``, the package modules the model needs and an ``auto_map`` that
names their classes. The modules are generated at save time from the installed package's own source, so the folder
always carries the code its weights were written with.

``transformers``' remote-code loader copies one folder of modules: the file ``auto_map`` names and, recursively,
the files named by its ``from .module import name`` lines; it follows no subpackage. So every module of the bundle
is written flat — ``nestedmemory/layers/memory.py`` as ``nestedmemory_layers_memory.py``, a package's
``__init__.py`` as ``nestedmemory_layers.py`` — with its relative imports rewritten to name those files. A module
imported as an object (``from . import chunked``) is bound with ``from . import <file> as chunked``, a form the
loader does not read, so a ``from .<file> import __name__`` line before it names the file to the loader.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
from pathlib import Path

PACKAGE = "nestedmemory"
#: the module whose classes ``auto_map`` names (it imports the config too); the bundle is everything it imports
#: from the package. One module for every auto class, so they share one copy of the code when loaded.
ENTRY = "nestedmemory.models.modeling"
AUTO_CLASSES = {"AutoConfig": "NestedMemoryConfig", "AutoModel": "NestedMemoryModel",
                "AutoModelForCausalLM": "NestedMemoryForCausalLM"}


def file_name(module: str) -> str:
    """The flat module name a package module has in a model folder: ``nestedmemory.layers.memory`` →
    ``nestedmemory_layers_memory``."""
    return module.replace(".", "_")


def _is_package(module: str) -> bool:
    return hasattr(importlib.import_module(module), "__path__")


def _is_module(name: str) -> bool:
    """Whether ``name`` (``package.attribute``) is a module rather than a name defined in the package."""
    return importlib.util.find_spec(name) is not None


def _rewrite_import(node: ast.ImportFrom, package: str) -> tuple[list[str], list[str]]:
    """The statements that replace the relative import ``node`` of a module of ``package`` in the flat folder, and
    the package modules they import."""
    base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
    if node.module is not None:
        return [ast.unparse(ast.ImportFrom(file_name(base), node.names, 1))], [base]
    statements, modules = [], []
    for alias in node.names:
        target = f"{base}.{alias.name}"
        if _is_module(target):  # `from . import chunked`: the module object, under its own name or the alias
            bound = ast.alias(file_name(target), alias.asname or alias.name)
            statements += [f"from .{file_name(target)} import __name__ as _  # copied by transformers' loader",
                           ast.unparse(ast.ImportFrom(None, [bound], 1))]
        else:
            statements.append(ast.unparse(ast.ImportFrom(file_name(base), [alias], 1)))
            target = base
        modules.append(target)
    return statements, modules


def flat_source(module: str) -> tuple[str, list[str]]:
    """The source of package ``module`` as a flat file of a model folder, and the package modules it imports."""
    path = Path(importlib.import_module(module).__file__)
    package = module if _is_package(module) else module.rpartition(".")[0]
    source, imported = _rewrite_imports(path.read_text(encoding="utf-8"), package)
    relative = path.relative_to(Path(importlib.import_module(PACKAGE).__file__).parent.parent).as_posix()
    return f"# {relative}, bundled by nestedmemory.models.hub for trust_remote_code; do not edit.\n{source}", imported


def _rewrite_imports(source: str, package: str) -> tuple[str, list[str]]:
    """``source`` of a module of ``package`` with its relative imports rewritten for the flat folder (located by the
    syntax tree, replaced in the text, so comments and layout stay), and the package modules it imports."""
    data = source.encode("utf-8")  # the syntax tree's column offsets count UTF-8 bytes
    line_starts = [0]
    for line in data.split(b"\n"):
        line_starts.append(line_starts[-1] + len(line) + 1)
    edits, imported = [], []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            statements, modules = _rewrite_import(node, package)
            start = line_starts[node.lineno - 1] + node.col_offset
            end = line_starts[node.end_lineno - 1] + node.end_col_offset
            edits.append((start, end, ("\n" + " " * node.col_offset).join(statements)))
            imported += modules
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text.encode("utf-8") + data[end:]
    return data.decode("utf-8"), imported


@functools.cache  # the installed source does not change within a process; every checkpoint writes it
def bundle(entry: str = ENTRY) -> dict[str, str]:
    """``{file name: source}`` of ``entry`` and every package module it imports, directly or not."""
    files, pending = {}, [entry]
    while pending:
        module = pending.pop()
        if file_name(module) in files:
            continue
        files[file_name(module)], imported = flat_source(module)
        pending += imported
    return files


def save_code(config, folder) -> None:
    """Write the model's code into ``folder`` and name its classes in ``config.auto_map``, so the
    ``config.json`` written next loads with ``trust_remote_code=True`` where this package is not installed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in bundle().items():
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
    config.auto_map = {auto: f"{file_name(ENTRY)}.{cls}" for auto, cls in AUTO_CLASSES.items()}
