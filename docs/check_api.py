"""Checks the API reference against the package, after `mkdocs build`.

    mkdocs build --strict && python docs/check_api.py [--site site]

Loads capsjax with griffe (the loader mkdocstrings renders the reference with; it reads the
source, imports nothing) and lists every public name: the modules under capsjax/ and, defined in
each (not imported into it), its public functions and classes and the classes' public methods,
where public means that neither the name nor any module or class it lies in starts with an
underscore. Then it checks that

- each has a docstring, and
- each appears in the built site's inventory, SITE/objects.inv (mkdocstrings writes one entry
  per object it rendered), i.e. has its place in the API reference (docs/api/).

Prints one line per problem, then a JSON summary as the last line, {"public_names": N,
"missing_docstrings": K, "missing_from_reference": M}; exits 1 if K or M is not 0, 2 if the
site has not been built.
"""

import argparse
import json
import re
import sys
import zlib
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "capsjax"
# name domain:role priority uri dispname (the name may hold spaces, the rest may not)
_ENTRY = re.compile(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)")


def public_names(package: griffe.Module) -> list[griffe.Object]:
  """The package's public modules, functions, classes and methods, in source order."""
  found: list[griffe.Object] = []

  def visit(obj: griffe.Object) -> None:
    found.append(obj)
    for name, member in obj.members.items():
      if name.startswith("_") or member.is_alias:
        continue
      if member.is_module or member.is_class or member.is_function:
        visit(member)

  visit(package)
  return found


def inventory_names(path: Path) -> set[str]:
  """The object names of a Sphinx inventory (version 2): four header lines, then zlib-compressed
  lines "name domain:role priority uri dispname"."""
  data = path.read_bytes()
  header_end = 0
  for _ in range(4):
    header_end = data.index(b"\n", header_end) + 1
  if not data.startswith(b"# Sphinx inventory version 2"):
    raise ValueError(f"{path} is not a Sphinx inventory of version 2.")
  names = set()
  for line in zlib.decompress(data[header_end:]).decode("utf-8").splitlines():
    match = _ENTRY.fullmatch(line.strip())
    if match:
      names.add(match.group(1))
  return names


def where(obj: griffe.Object) -> str:
  """The object's file and line, relative to the repository."""
  try:
    return f"{Path(obj.filepath).resolve().relative_to(ROOT)}:{obj.lineno or 1}"
  except (ValueError, TypeError):
    return str(obj.filepath)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--site", type=Path, default=ROOT / "site",
                 help="the built site (default: site/ of the repository)")
  args = p.parse_args(argv)
  inventory = args.site / "objects.inv"
  if not inventory.is_file():
    print(f"check_api: error: {inventory} not found; run `mkdocs build` first.")
    return 2
  package = griffe.load(PACKAGE, search_paths=[str(ROOT)], docstring_parser="google")
  names = public_names(package)
  listed = inventory_names(inventory)
  undocumented = [o for o in names if not (o.docstring and o.docstring.value.strip())]
  unlisted = [o for o in names if o.path not in listed]
  for o in undocumented:
    print(f"missing docstring: {o.path} ({o.kind.value}, {where(o)})")
  for o in unlisted:
    print(f"missing from the reference: {o.path} ({o.kind.value}, {where(o)}); add it to a "
          f"page under docs/api/")
  print(json.dumps({"public_names": len(names), "missing_docstrings": len(undocumented),
                    "missing_from_reference": len(unlisted)}))
  return 1 if undocumented or unlisted else 0


if __name__ == "__main__":
  sys.exit(main())
