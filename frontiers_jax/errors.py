"""The one error type a user sees for bad input.

Every check of user input (config keys and values, data files, the workdir)
raises `UsageError`. Launchers catch it and print exactly one line,

    error: <key or file>: <what is wrong>; <what is allowed>

then exit with status 2, before anything is compiled or written.
"""

EXIT_USAGE = 2


class UsageError(Exception):
  """Bad user input, reported as one line with exit status 2."""

  def __init__(self, where: str, problem: str, allowed: str):
    self.where = where
    self.problem = problem
    self.allowed = allowed
    super().__init__(f'{where}: {problem}; {allowed}')

  def line(self) -> str:
    return f'error: {self}'


def check(condition: bool, where: str, problem: str, allowed: str) -> None:
  """Raises `UsageError(where, problem, allowed)` unless `condition` holds."""
  if not condition:
    raise UsageError(where, problem, allowed)
