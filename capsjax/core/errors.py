"""The one rule for showing an error to a user: its text on one line."""


def one_line(e: BaseException | str) -> str:
  """The text of exception (or warning message) `e` on one line: every run of whitespace,
  newlines included, becomes one space (the CLI's `capsjax: error: ...` lines, a plugin that
  failed to load, a failed multi-process start)."""
  return " ".join(str(e).split())
