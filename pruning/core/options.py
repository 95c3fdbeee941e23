"""Method options declared once (name, type, default, allowed values, help) and checked from that
declaration: the library's validation, the CLI's method listing, the options recorded in prune.json and
the workflow schema's method list all read the same `Option` tuples. Torch-free, so that a workflow can
check every grid entry of its config without loading torch or a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


READS_MODEL, READS_TEXT = "model", "text"  # Option.reads: the value is a model spec / a text source


class MethodError(ValueError):
    """Bad method name or options."""


@dataclass(frozen=True)
class Option:
    """One keyword a method accepts. `ratio=True` marks the grid's ratio kinds (sparsity, nm, fraction, ...),
    which the workflow config lists under `ratios` rather than `options`.

    None (YAML null) stands for the default, or for "none" where `nullable` (e.g. no step cap); an option
    whose default is None is optional. `required` options have no default.
    `check` converts or refuses a value beyond its type and range (raising ValueError with the reason).
    `reads` marks a value that names something the run reads: READS_MODEL (a model spec) or READS_TEXT (a
    calibration source or text file); such values are inputs of the output rule (pruning.core.inputs).
    """

    name: str
    type: type  # bool, int, float, str or list (of `item`s)
    help: str
    default: Any = None
    required: bool = False
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    ratio: bool = False
    nullable: bool = False
    check: Callable[[Any], Any] | None = None
    item: type = int  # a list's element type: int or float
    reads: str = ""  # READS_MODEL, READS_TEXT, or "" (the value names nothing the run reads)

    def allowed(self) -> str:
        """What a valid value looks like, in words ("an integer >= 1", "a number in (0, 1)", ...)."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        if self.type is list:
            return "a list of integers" if self.item is int else "a list of numbers"
        if self.type is str:
            return "a string"
        noun = "an integer" if self.type is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {_number(self.low)}"
        return noun

    def parse(self, method: str, value):
        """The value, converted (int -> float for numbers) and checked, or a one-line MethodError."""
        if value is None and not self.nullable:
            value = self.default
        if value is None:
            return None
        if not self._has_type(value) or not self._in_range(value):
            raise MethodError(f"{method}: {self.name} must be {self.allowed()}, got {value!r}")
        if self.type is list:
            value = [float(i) for i in value] if self.item is float else list(value)
        elif self.type is float:
            value = float(value)
        if self.check is not None:
            try:
                value = self.check(value)
            except ValueError as exc:
                raise MethodError(f"{method}: {self.name}: {exc}") from None
        return value

    def _has_type(self, value) -> bool:
        if isinstance(value, bool):
            return self.type is bool
        if self.type is float:
            return isinstance(value, (int, float))
        if self.type is list:
            items = (int, float) if self.item is float else int
            return isinstance(value, (list, tuple)) and all(isinstance(i, items) and not isinstance(i, bool) for i in value)
        return isinstance(value, self.type)

    def _in_range(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def describe(option: Option) -> str:
    """One help line: `name` (allowed values, default) help."""
    if option.required:
        when = "required"
    elif option.default is None:
        when = "optional"
    elif isinstance(option.default, bool):
        when = f"default {str(option.default).lower()}"
    else:
        when = f"default {list(option.default) if option.type is list else option.default}"
    return f"{option.name} ({option.allowed()}; {when}): {option.help}"


def parse_options(method: str, declared: tuple[Option, ...], arguments: dict) -> dict:
    """Every declared option's value (given, else its default), in declaration order; an unknown
    keyword is refused naming it and listing the valid ones."""
    refuse_unknown(method, declared, arguments)
    values = {}
    for option in declared:
        if option.required and arguments.get(option.name) is None:
            raise MethodError(f"{method} needs {option.name}= ({option.help})")
        values[option.name] = option.parse(method, arguments.get(option.name, option.default))
    return values


def refuse_unknown(method: str, declared: tuple[Option, ...], arguments: dict) -> None:
    """A one-line error naming every keyword `declared` lacks, with the valid ones."""
    names = [o.name for o in declared]
    unknown = sorted(set(arguments) - set(names))
    if unknown:
        raise MethodError(f"{method}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid options: {', '.join(names) or 'none'}")


def split_arguments(declared: tuple[Option, ...], arguments: dict) -> tuple[dict, dict]:
    """(the keywords `declared` names, the rest) for methods that hand the rest to another method."""
    names = {o.name for o in declared}
    return ({k: v for k, v in arguments.items() if k in names}, {k: v for k, v in arguments.items() if k not in names})
