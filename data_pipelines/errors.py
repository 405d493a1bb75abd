"""The one exception type for bad input to the data pipeline."""


class DataError(ValueError):
  """Bad input: a missing file, malformed record, mismatched cache, impossible setting.

  The message is one line naming the file, key or value and what was expected; the command
  line prints it as `error: <message>` and exits non-zero instead of showing a traceback.
  """
