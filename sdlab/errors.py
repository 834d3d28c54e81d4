"""The one error type for bad user input: the CLI prints its message as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the bad value and what is allowed."""

    exit_code = 2


class CannotRun(UserError):
    """A valid choice this cell's model cannot run: a single run stops on it, a sweep skips and names the cell."""


def choose(kind: str, value: object, allowed: list[str] | tuple[str, ...] | dict) -> None:
    """Raise a UserError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise UserError(f"unknown {kind} {value!r}; choose one of: {', '.join(map(str, allowed))}")
