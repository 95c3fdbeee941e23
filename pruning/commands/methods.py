"""methods: list the pruning methods with their options (type, allowed values, default, meaning)."""
from __future__ import annotations

import yaml

from ..methods.catalog import listing, schema_rules


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "methods", help="list the pruning methods and their options",
        description="Every registered method with its description and options, as declared in its module "
                    "(the same declarations validate --option and the workflow config).")
    parser.add_argument("--schema", action="store_true",
                        help="print the per-method rules of workflow/schemas/config.schema.yaml ($defs.method.allOf) "
                             "instead")
    parser.set_defaults(run=run)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=100).strip().replace("\n", "\n    ")


def run(args) -> int:
    if args.schema:
        for rule in schema_rules():
            print(f"- if: {_flow(rule['if'])}\n  then: {_flow(rule['then'])}")
    else:
        print(listing())
    return 0
