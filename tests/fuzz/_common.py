"""Shared pieces of the fuzz suite: hypothesis settings and the one-line error checks."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence

from hypothesis import HealthCheck, settings

from pretrain import cli

EXIT_BAD_INPUT = 2

# Reproducible and flake-free: the same examples on every run (derandomize), no example
# database written next to the tests, no per-example deadline (the first example pays for
# imports). max_examples is set per test to keep tests/fuzz under its time budget.
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def fuzz(max_examples: int) -> settings:
  """FUZZ with this many examples."""
  return settings(FUZZ, max_examples=max_examples)


def assert_one_line(message: str) -> None:
  """An error message is one non-empty line (no traceback, no embedded line breaks)."""
  assert message.strip(), "empty error message"
  assert len(message.splitlines()) == 1, f"error message is not one line: {message!r}"
  assert "Traceback" not in message, message


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
  """`pretrain ARGV` in this process; returns (exit code, stdout, stderr).

  An exception escaping `cli.main` (what the console script would show as a traceback)
  propagates and fails the test.
  """
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(list(argv))
  return code, out.getvalue(), err.getvalue()


def assert_cli_error(code: int, err: str) -> str:
  """Exit code 2 and exactly one stderr line `error: ...`; returns the line."""
  lines = err.splitlines()
  assert code == EXIT_BAD_INPUT, (code, err)
  assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
  assert lines[0].startswith("error: "), lines[0]
  return lines[0]


def snapshot(root: str) -> dict[str, bytes | None]:
  """Every path under `root` -> its bytes (None for directories)."""
  out: dict[str, bytes | None] = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = None
    for f in filenames:
      path = os.path.join(dirpath, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, root)] = fh.read()
  return out
