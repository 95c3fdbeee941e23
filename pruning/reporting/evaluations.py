"""The evaluations of a grid run and their metric files: the one place a metric file's name is written,
both ways (`Evaluation.file_name` builds it for the workflow's rules, `parse_metric_file` reads it back when
results are collected), with the commands that write each file, the workflow config section that turns it
on and the tables it adds. Plain Python: Snakemake reads it to build its DAG.

A run is one folder `.../{model}/{method}/{ratio}/` (tokens as in `pruning.reporting.grid`); each evaluation
writes `{stem}.json` there, or `{stem}-{key}.json` per key when it measures one thing per key (a zero-shot
task, a GGUF output type). A new evaluation is its module, its command, an entry here, its rule and its
table layout (plus its config section)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..core.io import PRUNE_REPORT

SUFFIX = ".json"


@dataclass(frozen=True)
class Evaluation:
    source: str  # the kind of metric file: the long frame's `source` column, what the tables select by
    stem: str  # the file name without `-{key}` and `.json`
    commands: tuple[str, ...]  # the CLI commands (pruning/commands/<name>.py) that make the file, in order
    key: str | None = None  # what names one file per value (task, outtype); None: one file per run
    # Its workflow config section is named as its source (zeroshot, gguf, speed; with `models`, the rows it measures)
    keys_from: str | None = None  # the section's list of keys (one file per key)
    switch: str | None = None  # the section's boolean that turns an unkeyed evaluation on
    pruned_only: bool = False  # dense rows have no such file
    tables: tuple[tuple[str, str], ...] = ()  # (table name, layout) added when a run has this file

    @property
    def section(self) -> str | None:
        """The workflow config section that turns it on; None: every grid row has it."""
        return self.source if self.keys_from or self.switch else None

    @property
    def file_pattern(self) -> str:
        """The file name with its key as a `{key}` field (the workflow's wildcard)."""
        return f"{self.stem}-{{{self.key}}}{SUFFIX}" if self.key else f"{self.stem}{SUFFIX}"

    def file_name(self, key: str = "") -> str:
        if bool(key) != bool(self.key):
            raise ValueError(f"{self.source} metric files are named {self.file_pattern}, not with key {key!r}")
        return self.file_pattern.format(**({self.key: key} if self.key else {}))

    def keys(self, config: Mapping) -> list[str]:
        """The keys a workflow config asks for (`[""]` for an unkeyed evaluation that is on, [] when off)."""
        if self.section is None:
            return [""]
        settings = config[self.section]
        if self.keys_from:
            return list(settings[self.keys_from] or [])
        return [""] if settings[self.switch] else []

    def applies(self, config: Mapping, model: str, pruned: bool, entry: str | None = None, value=None) -> bool:
        """Whether a grid row of `model` (pruned or dense; of method entry `entry` at ratio `value`) gets this
        file: on, the model among the section's `models` (null = every model), the row not `ppl_only`, and a
        pruned row where only pruned rows have it."""
        if self.pruned_only and not pruned:
            return False
        if self.section is None:
            return True
        if entry is not None and perplexity_only((config.get("methods") or {}).get(entry, {}), value):
            return False
        models = config[self.section]["models"]
        return bool(self.keys(config)) and (models is None or model in models)


# A method entry's key: its rows get the perplexity evaluation only (no zero-shot, GGUF or speed jobs), for rows
# that fill a perplexity table or curve (PruneGPT's block counts, the frontier's sparsities) and would cost the
# grid's time budget in the other stages. true: every row of the entry; a list: the rows at these ratio values.
PPL_ONLY = "ppl_only"


def perplexity_only(entry: Mapping, value) -> bool:
    """Whether a method entry's row at ratio `value` is `ppl_only`."""
    setting = entry.get(PPL_ONLY, False)
    return setting is True or (isinstance(setting, list) and value in setting)


EVALUATIONS = {e.source: e for e in (
    Evaluation("ppl", "ppl", ("evaluate",)),
    Evaluation("prune", PRUNE_REPORT.removesuffix(SUFFIX), ("prune",), pruned_only=True),
    Evaluation("zeroshot", "zeroshot", ("zeroshot",), key="task", keys_from="tasks",
               tables=(("zeroshot", "zeroshot"), ("downstream", "downstream"))),
    Evaluation("gguf", "gguf", ("convert", "gguf_eval"), key="outtype", keys_from="outtypes",
               tables=(("gguf", "gguf"),)),
    Evaluation("speed", "speed", ("speed",), switch="enabled"),
)}
STAGES = tuple(e.section for e in EVALUATIONS.values() if e.section)  # the config sections that turn one on


def parse_metric_file(name: str) -> tuple[str, str] | None:
    """(source, key) of a metric file name (key "" for an unkeyed one), or None for any other name."""
    for e in EVALUATIONS.values():
        match = re.match(rf"^{re.escape(e.stem)}" + (r"-(?P<key>.+)" if e.key else "") + rf"{re.escape(SUFFIX)}$", name)
        if match:
            return e.source, match.groupdict().get("key") or ""
    return None


def file_patterns() -> str:
    """Every metric file name, for messages: ppl.json, prune.json, zeroshot-{task}.json, ..."""
    return ", ".join(e.file_pattern for e in EVALUATIONS.values())


def metric_file_names(config: Mapping, model: str, pruned: bool, entry: str | None = None, value=None) -> list[str]:
    """The names of every metric file a workflow config asks for on a grid row of `model` (and method entry
    `entry`, ratio `value`), in order."""
    return [e.file_name(key) for e in EVALUATIONS.values() if e.applies(config, model, pruned, entry, value)
            for key in e.keys(config)]


def evaluation_commands() -> tuple[str, ...]:
    """The commands that make metric files, in the order of EVALUATIONS."""
    return tuple(dict.fromkeys(command for e in EVALUATIONS.values() for command in e.commands))
