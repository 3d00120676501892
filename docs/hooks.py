"""MkDocs hook (mkdocs.yml `hooks:`): serves the repository's figures to the docs without copying
them into docs/.

The experiments write their figures to experiments/figures/ and the benchmarks theirs to
benchmarks/results/, where the README links them too; the pages link them as figures/... and
benchmarks/..., which this hook adds to the site's files (the images only).
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
SERVED = {"figures": ROOT / "experiments" / "figures",
          "benchmarks": ROOT / "benchmarks" / "results"}
IMAGES = {".png", ".svg", ".jpg"}


def on_files(files, config):
  """Adds every image under SERVED's folders, as SERVED's name/relative path."""
  for name, folder in SERVED.items():
    for path in sorted(folder.rglob("*")):
      if path.suffix in IMAGES and path.is_file():
        uri = f"{name}/{path.relative_to(folder).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
  return files
