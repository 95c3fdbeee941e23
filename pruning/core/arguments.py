"""Counts and lengths given as arguments: each a whole number at least as large as its use needs, refused in
one line naming the argument as the caller spells it (a CLI flag or a keyword)."""
from __future__ import annotations

MIN_SEQLEN = 2  # a window predicts each token from the ones before it, so it needs at least two


def count_problem(name: str, value, minimum: int = 1) -> str | None:
    """Why `value` is not a whole number >= `minimum` (named `name` as the caller spells it), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"{name} must be a whole number >= {minimum}, got {value!r}"
    return None


def positive(counts: dict[str, int | None], minimum: int = 1, error: type[Exception] = ValueError) -> None:
    """Every given count ({"--batch-size": 8} or {"repeats": 5}; None: not given) is a whole number >= `minimum`;
    else `error` with the name as given (a CLI flag or a keyword argument)."""
    for name, value in counts.items():
        if value is not None and (problem := count_problem(name, value, minimum)):
            raise error(problem)
