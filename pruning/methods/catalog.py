"""The registry's declarations in the forms other parts need: the method listing of the CLI and the
method names and per-method rules of the workflow config schema (workflow/schemas/config.schema.yaml, which the
workflow fills through `config_schema` when it loads)."""
from __future__ import annotations

from .base import available_methods, base_methods, method_class
from ..core.options import Option, describe


def is_composite(name: str) -> bool:
    """Methods that run other methods (distill, all): their ratios may live in their options."""
    return bool(method_class(name).COMPOSITE)


def ratio_kinds(name: str) -> list[str]:
    """The grid ratio kinds a workflow entry of this method may list under `ratios`."""
    if method_class(name).WRAPS_BASE_METHOD:
        return sorted({kind for base in base_methods() for kind in ratio_kinds(base)})
    return [o.name for o in method_class(name).OPTIONS if o.ratio]


def option_names(name: str) -> list[str]:
    """The keys a workflow entry of this method may give under `options`."""
    declared = [o.name for o in method_class(name).OPTIONS if is_composite(name) or not o.ratio]
    if method_class(name).WRAPS_BASE_METHOD:
        declared += sorted({o.name for base in base_methods() for o in method_class(base).OPTIONS} - set(declared))
    return declared


def schema_rules() -> list[dict]:
    """One if/then rule per method for the schema's `$defs.method.allOf`."""
    rules = []
    for name in available_methods():
        names = option_names(name)
        then: dict = {"properties": {"ratios": {"propertyNames": {"enum": ratio_kinds(name)}},
                                     "options": {"propertyNames": {"enum": names}} if names else {"maxProperties": 0}}}
        required = [o.name for o in method_class(name).OPTIONS if o.required and not o.ratio]
        if required:
            then["properties"]["options"]["required"] = required
        then = {"required": ["options" if required else "ratios"], **then} if required or not is_composite(name) else then
        rules.append({"if": {"required": ["method"], "properties": {"method": {"const": name}}}, "then": then})
    return rules


def config_schema(schema: dict) -> dict:
    """The workflow config schema with the registry's part filled in: `$defs.method`'s method names and its
    per-method rules (`schema_rules`)."""
    method = schema["$defs"]["method"]
    method["properties"]["method"]["enum"] = available_methods()
    method["allOf"] = schema_rules()
    return schema


def listing() -> str:
    """Every method with its description and options (what `python -m pruning methods` prints)."""
    lines = []
    for name in available_methods():
        cls = method_class(name)
        lines.append(f"{name}: {cls.description}")
        lines += [f"  {describe(o)}" for o in cls.OPTIONS]
        if cls.WRAPS_BASE_METHOD:
            lines.append("  ... and the ratio and options of base_method")
    return "\n".join(lines)


def summary() -> str:
    """One line per method naming its options, for `prune --help`."""
    def names(options: tuple[Option, ...]) -> str:
        return ", ".join(o.name for o in options) or "none"
    return "; ".join(f"{name}: {names(method_class(name).OPTIONS)}" for name in available_methods())
