"""Writes generated text between two HTML-comment markers of a README or docs page (used by the
experiments' --update-readme)."""

from pathlib import Path


def replace_block(readme_path: Path, start: str, end: str, text: str, prog: str) -> None:
  """Replaces what lies between `start` and `end` in `readme_path` with `text`; exits with
  `prog: error: ...` if the markers are missing."""
  readme = Path(readme_path).read_text()
  if start not in readme or end not in readme:
    raise SystemExit(f"{prog}: error: {readme_path} has no {start} ... {end} block")
  head, rest = readme.split(start, 1)
  _, tail = rest.split(end, 1)
  Path(readme_path).write_text(f"{head}{start}\n{text}\n{end}{tail}")
