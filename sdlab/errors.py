"""The one error type for bad user input: the CLI prints its message as one line and exits with code 2."""

import difflib


class UserError(Exception):
    """Bad input from the user: the message names the bad value and what is allowed."""

    exit_code = 2


class CannotRun(UserError):
    """A valid choice this cell's model cannot run: a single run stops on it, a sweep skips and names the cell."""


def near_miss(word: str, candidates) -> str:
    """' (did you mean X?)' for the candidate closest to `word` ('dpm++_2m' is spelt dpmpp_2m), else ''."""
    spelled = word.lower().replace("++", "pp").replace("+", "p").replace("-", "_").replace(" ", "_")
    close = difflib.get_close_matches(spelled, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def repeats(values) -> list:
    """Each value listed more than once, in the order first listed (1 and 1.0 are one value; True and 1 are not)."""
    counts: dict = {}
    for value in values:
        try:
            key = (type(value) is bool, value, hash(value))
        except TypeError:  # a list or dict: told apart by its text
            key = repr(value)
        counts.setdefault(key, [value, 0])[1] += 1
    return [value for value, n in counts.values() if n > 1]


def choose(kind: str, value: object, allowed: list[str] | tuple[str, ...] | dict) -> None:
    """Raise a UserError unless `value` is one of `allowed`, naming its near miss."""
    if not isinstance(value, (str, int, float)) or value not in allowed:  # a list or dict is no name (nor hashable)
        near = near_miss(value, map(str, allowed)) if isinstance(value, str) else ""
        raise UserError(f"unknown {kind} {value!r}{near}; choose one of: {', '.join(map(str, allowed))}")
