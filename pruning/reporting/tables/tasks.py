"""The lm-eval layouts (runs × tasks with acc, PruneGPT's tasks × runs with each task's headline metric) and
the GGUF table."""
from __future__ import annotations

import pandas as pd

from ..metric_files import Results, ordered_unique
from .common import GGUF, MISSING, ZEROSHOT, ZEROSHOT_METRIC, Table, _notes, _table, fmt_bytes, fmt_ppl

# The metric lm-eval reports as a task's headline, first match wins: GSM8K's exact match under its strict
# "#### <number>" filter, acc_norm where the task defines it, acc otherwise.
HEADLINE_METRICS = ("exact_match,strict-match", "exact_match", "acc_norm", "acc")
SETTINGS = ["n_docs", "limit", "num_fewshot"]
# Row labels of PruneGPT's table, in its order; other tasks follow under their lm-eval names.
TASK_LABELS = {"winogrande": "Winogrande", "boolq": "BoolQ", "hellaswag": "HellaSwag", "arc_challenge": "ARC-Challenge",
               "arc_easy": "ARC-Easy", "piqa": "PIQA", "openbookqa": "OpenBookQA", "lambada_openai": "LAMBADA",
               "mmlu": "MMLU", "gsm8k": "GSM8K"}


def headline_metric(metrics) -> str | None:
    """The headline among a task's metric names (HEADLINE_METRICS), None when it has none of them."""
    return next((name for name in HEADLINE_METRICS if name in set(metrics)), None)


def headline_scores(results: Results, ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(the long rows read, the headline value per run × (task, shots) with None where not measured, the
    headline metric of each task). A task's headline comes from the metric names its files report."""
    zeroshot = results.long[results.long.run.isin(ids) & (results.long.source == "zeroshot")]
    values = zeroshot[zeroshot.metric.str.startswith("metrics.") & zeroshot.metric.str.endswith(".value")]
    names = values.metric.str.slice(len("metrics."), -len(".value"))
    headline = {task: headline_metric(names[values.key == task]) for task in ordered_unique(values.key)}
    shown = {(task, f"metrics.{metric}.value") for task, metric in headline.items() if metric}
    keep = pd.Series([(key, metric) in shown or metric in SETTINGS for key, metric in zip(zeroshot.key, zeroshot.metric)],
                     index=zeroshot.index, dtype=bool)  # a Series: an empty list would select columns, not rows
    rows = zeroshot[keep]
    shots = rows[rows.metric == "num_fewshot"].set_index(["run", "key"]).value
    scores = rows[rows.metric.str.startswith("metrics.")]
    cells = pd.DataFrame({"run": scores.run, "task": scores.key, "value": scores.value,
                          "shots": [shots.get((run, key)) for run, key in zip(scores.run, scores.key)]})
    order = {task: index for index, task in enumerate(TASK_LABELS)}
    columns = sorted(ordered_unique(zip(cells.task, cells.shots)), key=lambda c: (order.get(c[0], len(order)), c))
    wide = cells.pivot(index="run", columns=["task", "shots"], values="value").reindex(index=ids, columns=columns)
    return rows, wide.astype(object).where(wide.notna(), None), {t: m for t, m in headline.items() if m}


def metric_name(metric: str) -> str:
    """lm-eval's "exact_match,strict-match" as "exact_match (strict-match filter)"."""
    name, _, filter_name = metric.partition(",")
    return f"{name} ({filter_name} filter)" if filter_name else name


def average(values) -> float | None:
    """Mean over tasks, None unless every task was measured."""
    values = list(values)
    return None if not values or None in values else sum(values) / len(values)


def _limits(rows: pd.DataFrame) -> str:
    limits = sorted(ordered_unique(map(str, rows.value[rows.metric == "limit"])))
    return "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"


def run_label(results: Results, run: int) -> str:
    """A grid row as a column label: model · method · ratio (model · dense for the baseline)."""
    model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
    return " · ".join([model, method] + ([] if ratio.kind == "dense" else [ratio.label]))


def downstream_table(results: Results, notes=None) -> Table | None:
    """PruneGPT layout: rows are tasks with their shot count, columns grid rows, each cell the task's headline
    metric × 100, and an Average row (only for columns that measured every task)."""
    measured = results.ids(results.has("zeroshot"))
    if not measured:
        return None
    rows, scores, headline = headline_scores(results, measured)
    labels = [run_label(results, run) for run in measured]
    display = pd.DataFrame({"task": [f"{TASK_LABELS.get(task, task)} ({shots}-shot)" for task, shots in scores.columns]})
    for label, run in zip(labels, measured):
        display[label] = [MISSING if v is None else f"{100 * v:.2f}" for v in scores.loc[run]]
    display.loc[len(display)] = ["Average"] + [MISSING if (a := average(scores.loc[run])) is None else f"{100 * a:.2f}"
                                               for run in measured]
    tasks = ordered_unique(scores.columns.get_level_values("task"))
    metrics = ", ".join(f"{TASK_LABELS.get(task, task)} {metric_name(headline[task])}" for task in tasks)
    text = (f"Protocol: lm-evaluation-harness, each task's headline metric × 100 ({metrics}), shots as in the "
            f"row label, {_limits(rows)}. Average: mean over the tasks of the column.")
    return _table("downstream", "Downstream tasks", text + _notes(results.runs.model[measured], notes), display, rows)


def zeroshot_table(results: Results, notes=None) -> Table | None:
    """Tasks as columns, one row per run, plus the Average over tasks (only when every task was run)."""
    measured = results.ids(results.has("zeroshot"))
    if not measured:
        return None
    rows = results.select(measured, zeroshot=ZEROSHOT)
    values = results.pivot(rows, ["run", "key"], zeroshot=ZEROSHOT)["zeroshot"]
    tasks = sorted(ordered_unique(values.index.get_level_values("key")))
    accuracy = values[f"metrics.{ZEROSHOT_METRIC}.value"].unstack("key").reindex(index=measured, columns=tasks)
    accuracy = accuracy.astype(object).where(accuracy.notna(), None)
    display = results.runs.loc[measured, ["model", "method"]].assign(ratio=results.runs.ratio[measured].map(
        lambda r: r.label))
    for task in tasks:
        display[task] = accuracy[task].map(lambda v: MISSING if v is None else f"{100 * v:.2f}")
    display["Average"] = [MISSING if None in row else f"{100 * sum(row) / len(row):.2f}"
                          for row in accuracy.itertuples(index=False)]
    shots = sorted(ordered_unique(values.num_fewshot))
    limits = sorted(ordered_unique(map(str, values.limit)))
    extent = "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"
    text = (f"Protocol: lm-evaluation-harness, metric {ZEROSHOT_METRIC} × 100, {', '.join(map(str, shots))}-shot, "
            f"{extent}. Average over the tasks of the row.")
    return _table("zeroshot", "Zero-shot accuracy", text + _notes(display.model, notes), display, rows)


SAME_WINDOWS = ["dataset", "split", "seqlen", "windows"]  # what makes two perplexities comparable


def gguf_table(results: Results, notes=None) -> Table | None:
    """Per run and GGUF output type: file size, llama.cpp PPL and the Hugging Face PPL on the same windows:
    gguf-eval's own reference (--compare-hf), else the run's perplexity file when it scored the same windows
    (the workflow measures that once, in its perplexity rule)."""
    measured = results.ids(results.has("gguf"))
    if not measured:
        return None
    rows = results.select(measured, gguf=GGUF)
    records = results.pivot(rows, ["run", "key"], gguf=GGUF)["gguf"].reindex(measured, level="run")
    ppl_rows, hf = results.wide(measured, ppl=["ppl", *SAME_WINDOWS])
    used = []
    display = []
    for (run, outtype), record in records.iterrows():
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        reference = record["reference.ppl"]
        if reference is None and all(record[k] == hf.loc[run, ("ppl", k)] for k in SAME_WINDOWS):
            reference = hf.loc[run, ("ppl", "ppl")]
            used.append(run)
        difference = None if reference is None else (record["ppl"] - reference) / reference
        display.append({"model": model, "method": method, "ratio": ratio.label, "type": outtype,
                        "GGUF size": fmt_bytes(record["gguf.bytes"]), "PPL (llama.cpp)": fmt_ppl(record["ppl"]),
                        "PPL (transformers)": fmt_ppl(reference),
                        "difference": MISSING if difference is None else f"{difference:+.2%}"})
    first = records.iloc[0]
    text = (f"Protocol: llama.cpp (llama-cpp-python) token-level perplexity on the windows of the Hugging Face "
            f"evaluator: {first['dataset']} {first['split'] or ''}, windows of {first['seqlen']} tokens, "
            f"{first['windows']} windows; transformers PPL of the same model on the same windows (the run's "
            "perplexity file where the GGUF evaluation did not measure it again).")
    rows = pd.concat([rows, ppl_rows[ppl_rows.run.isin(used)]])
    return _table("gguf", "GGUF export", text + _notes((d["model"] for d in display), notes), display, rows)


LAYOUTS = {"zeroshot": zeroshot_table, "downstream": downstream_table, "gguf": gguf_table}
