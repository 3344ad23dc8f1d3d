"""The one exception type for bad user input; its message names the input, the rule and the fix."""


class PrepError(ValueError):
    """Bad input to data_prep (path, argument, file format). The CLI logs it and exits with code 2."""
