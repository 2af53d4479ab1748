"""The one base class of errors a user can fix (params, data, weights, paths).

Stages and the CLI report a :class:`LightSAFTError` as one ``error: ...`` line (exit code 2);
anything else is a bug and keeps its traceback.
"""


class LightSAFTError(Exception):
    """A problem with the user's input, named in the message together with what to do."""
