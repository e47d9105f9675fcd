"""The package's import graph: modules import downwards only, and no module uses another
module's private names. Read from the source with ``ast`` (imports inside functions count)."""
import ast
import pathlib

import diml_jax

ROOT = pathlib.Path(diml_jax.__file__).parent


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_all():
  return {module_name(p): ast.parse(p.read_text(), str(p)) for p in ROOT.rglob("*.py")}


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
  """The diml_jax modules a module imports (``from a import b`` counts ``a.b`` if a module)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        found.add(full if full in modules else node.module)
  return found & modules


def test_no_import_cycles():
  trees = parse_all()
  modules = set(trees)
  # A package's __init__ re-exports its modules: an edge from the package to them, but a
  # module importing a sibling through the package does not depend on the whole package.
  graph = {m: {d for d in imported(t, modules) if d != m} for m, t in trees.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        cycle = stack[stack.index(d):] + [d]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_no_private_names_across_modules():
  trees = parse_all()
  modules = set(trees)
  used = []
  for name, tree in trees.items():
    aliases = {}  # local name -> diml_jax module
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          full = f"{node.module}.{a.name}"
          if full in modules:
            aliases[a.asname or a.name] = full
          elif node.module in modules and a.name.startswith("_") and not a.name.startswith("__"):
            used.append(f"{name}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        used.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
  assert not used, "private names used outside their module: " + "; ".join(sorted(used))
