"""The lm-eval layouts (runs × tasks with acc, PruneGPT's tasks × runs with each task's headline metric) and
the GGUF table."""
from __future__ import annotations

import pandas as pd

from ..metric_files import Results, ordered_unique
from ..uncertainty import (Figure, accuracy_figures, accuracy_note, average_figure, informative, missing_note,
                           perplexity_figures, se_legend, unpaired_note)
from .common import (AT_CHANCE, GGUF, MISSING, ZEROSHOT, ZEROSHOT_METRIC, Table, _notes, _table, fmt_accuracy,
                     fmt_bytes, fmt_ppl, fmt_ppl_figure)

# The metric lm-eval reports as a task's headline, first match wins: GSM8K's exact match under its strict
# "#### <number>" filter, acc_norm where the task defines it, acc otherwise.
HEADLINE_METRICS = ("exact_match,strict-match", "exact_match", "acc_norm", "acc")
SETTINGS = ["n_docs", "limit", "num_fewshot"]
ONLINE_ONLY = "— (online only)"  # the cell of a task an offline run could not read
# Row labels of PruneGPT's table, in its order; other tasks follow under their lm-eval names.
TASK_LABELS = {"winogrande": "Winogrande", "boolq": "BoolQ", "hellaswag": "HellaSwag", "arc_challenge": "ARC-Challenge",
               "arc_easy": "ARC-Easy", "piqa": "PIQA", "openbookqa": "OpenBookQA", "lambada_openai": "LAMBADA",
               "mmlu": "MMLU", "gsm8k": "GSM8K"}


def task_rank(task: str) -> int:
    """A task's place in PruneGPT's order (TASK_LABELS); tasks it does not list come after."""
    order = list(TASK_LABELS)
    return order.index(task) if task in order else len(order)


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
    columns = sorted(ordered_unique(zip(cells.task, cells.shots)), key=lambda c: (task_rank(c[0]), c))
    wide = cells.pivot(index="run", columns=["task", "shots"], values="value").reindex(index=ids, columns=columns)
    return rows, wide.astype(object).where(wide.notna(), None), {t: m for t, m in headline.items() if m}


def metric_name(metric: str) -> str:
    """lm-eval's "exact_match,strict-match" as "exact_match (strict-match filter)"."""
    name, _, filter_name = metric.partition(",")
    return f"{name} ({filter_name} filter)" if filter_name else name


def task_figures(results: Results, ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str],
                                                           dict[tuple[int, str], Figure]]:
    """`headline_scores` and the headline metric's figure of each (run, task) (`uncertainty.accuracy_figures`)."""
    rows, scores, headline = headline_scores(results, ids)
    return rows, scores, headline, accuracy_figures(results, ids, headline)


def average(figures: dict[tuple[int, str], Figure], run: int, tasks) -> Figure | None:
    """Mean over the tasks that separate the run's model from chance, None unless every task was measured
    (or when every one is at chance)."""
    chosen = [figures.get((run, task)) for task in tasks]
    return None if None in chosen else average_figure(informative(chosen))


def chance_note(figures: dict[tuple[int, str], Figure], results: Results) -> str:
    """Which tasks each model's dense run answers at chance (they stay out of the Average), with the chance
    rate and, where known, the majority answer's rate."""
    flagged: dict[str, list[str]] = {}
    for (run, task), figure in figures.items():
        if figure.at_chance and results.runs.kind[run] == "dense":
            majority = "" if figure.majority is None else f", majority answer {100 * figure.majority:.1f}"
            flagged.setdefault(results.runs.model[run], []).append(
                f"{TASK_LABELS.get(task, task)} (dense {100 * figure.value:.2f} ± {100 * figure.se:.1f}, chance "
                f"{100 * figure.chance:.1f}{majority})")
    if not flagged:
        return ""
    listed = "; ".join(f"{model}: {', '.join(tasks)}" for model, tasks in flagged.items())
    return (f"{AT_CHANCE.capitalize()} — not informative for this model: the dense model does not beat guessing "
            "(1/number of answers for multiple choice, 0 for a free answer) by more than 2 standard errors (below "
            "chance counts too: answers by a bias, not by reading), so the task says nothing about pruning that "
            f"model and is left out of its Average (a dash when no task is left); {listed}.")


def accuracy_uncertainty(figures: dict[tuple[int, str], Figure], results: Results) -> str:
    """The caption's sentences on the accuracies' uncertainty and chance."""
    values = list(figures.values())
    parts = []
    if any(f.se is not None for f in values):
        parts.append(se_legend("documents") + " Δ: the paired difference from the dense model on the same "
                     "documents, ± the standard error of the per-document differences; Average: ± from the tasks' "
                     "standard errors.")
    parts += [chance_note(figures, results), accuracy_note(values), missing_note(values, "document"),
              unpaired_note(values)]
    return " ".join(part for part in parts if part)


def _limits(rows: pd.DataFrame) -> str:
    limits = sorted(ordered_unique(map(str, rows.value[rows.metric == "limit"])))
    return "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"


def run_label(results: Results, run: int) -> str:
    """A grid row as a column label: model · method · ratio (model · dense for the baseline)."""
    model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
    return " · ".join([model, method] + ([] if ratio.kind == "dense" else [ratio.label]))


def downstream_table(results: Results, notes=None) -> Table | None:
    """PruneGPT layout: rows are tasks with their shot count, columns grid rows, each cell the task's headline
    metric × 100 with its uncertainty, and an Average row (over the informative tasks, only for columns that
    measured every task)."""
    measured = results.ids(results.has("zeroshot"))
    if not measured:
        return None
    rows, scores, headline, figures = task_figures(results, measured)
    labels = [run_label(results, run) for run in measured]
    tasks = ordered_unique(scores.columns.get_level_values("task"))
    display = pd.DataFrame({"task": [f"{TASK_LABELS.get(task, task)} ({shots}-shot)" for task, shots in scores.columns]})
    for label, run in zip(labels, measured):
        display[label] = [MISSING if v is None else fmt_accuracy(figures.get((run, task)))
                          for (task, _), v in scores.loc[run].items()]
    if results.skipped_tasks:  # in PruneGPT's task order among the measured ones
        skipped = pd.DataFrame({"task": [f"{TASK_LABELS.get(task, task)} ({shots}-shot)"
                                         for task, shots in results.skipped_tasks.items()],
                                **{label: ONLINE_ONLY for label in labels}})
        ranks = [task_rank(task) for task, _ in scores.columns] + list(map(task_rank, results.skipped_tasks))
        display = pd.concat([display, skipped], ignore_index=True).iloc[
            sorted(range(len(ranks)), key=ranks.__getitem__)].reset_index(drop=True)
    display.loc[len(display)] = ["Average"] + [
        fmt_accuracy(average(figures, run, tasks) if None not in list(scores.loc[run]) else None) for run in measured]
    metrics = ", ".join(f"{TASK_LABELS.get(task, task)} {metric_name(headline[task])}" for task in tasks)
    skipped = (f" {ONLINE_ONLY}: {', '.join(TASK_LABELS.get(task, task) for task in results.skipped_tasks)} has no "
               f"local copy and this run was offline ({results.skip_reason}); an online run fills it in, the Average "
               "leaves it out." if results.skipped_tasks else "")
    text = (f"Protocol: lm-evaluation-harness, each task's headline metric × 100 ({metrics}), shots as in the "
            f"row label, {_limits(rows)}. Average: mean over the tasks of the column that are not at chance."
            f"{skipped} " + accuracy_uncertainty(figures, results))
    return _table("downstream", "Downstream tasks", text.strip() + _notes(results.runs.model[measured], notes),
                  display, rows, headline_keys(figures, headline))


def headline_keys(figures: dict[tuple[int, str], Figure], metrics: dict[str, str]) -> dict:
    """Per-(run, task) figures keyed by the long-frame row of the metric they describe."""
    return {(run, "zeroshot", task, f"metrics.{metrics[task]}.value"): figure for (run, task), figure in figures.items()}


def zeroshot_table(results: Results, notes=None) -> Table | None:
    """Tasks as columns, one row per run, plus the Average over the informative tasks (only when every task
    was run)."""
    measured = results.ids(results.has("zeroshot"))
    if not measured:
        return None
    rows = results.select(measured, zeroshot=ZEROSHOT)
    values = results.pivot(rows, ["run", "key"], zeroshot=ZEROSHOT)["zeroshot"]
    tasks = sorted(ordered_unique(values.index.get_level_values("key")))
    metrics = {task: ZEROSHOT_METRIC for task in tasks}
    figures = accuracy_figures(results, measured, metrics)
    display = results.runs.loc[measured, ["model", "method"]].assign(ratio=results.runs.ratio[measured].map(
        lambda r: r.label))
    for task in tasks:
        display[task] = [fmt_accuracy(figures.get((run, task))) for run in measured]
    display["Average"] = [fmt_accuracy(average(figures, run, tasks)) for run in measured]
    shots = sorted(ordered_unique(values.num_fewshot))
    limits = sorted(ordered_unique(map(str, values.limit)))
    extent = "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"
    text = (f"Protocol: lm-evaluation-harness, metric {ZEROSHOT_METRIC} × 100, {', '.join(map(str, shots))}-shot, "
            f"{extent}. Average over the tasks of the row that are not at chance. "
            + accuracy_uncertainty(figures, results))
    return _table("zeroshot", "Zero-shot accuracy", text.strip() + _notes(display.model, notes), display, rows,
                  headline_keys(figures, metrics))


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
    figures = {(run, outtype): perplexity_figures(results, [run], "gguf", outtype, paired=False).get(run)
               for run, outtype in records.index}
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
                        "GGUF size": fmt_bytes(record["gguf.bytes"]),
                        "PPL (llama.cpp)": fmt_ppl_figure(figures[(run, outtype)], record["ppl"]),
                        "PPL (transformers)": fmt_ppl(reference),
                        "difference": MISSING if difference is None else f"{difference:+.2%}"})
    first = records.iloc[0]
    text = (f"Protocol: llama.cpp (llama-cpp-python) token-level perplexity on the windows of the Hugging Face "
            f"evaluator: {first['dataset']} {first['split'] or ''}, windows of {first['seqlen']} tokens, "
            f"{first['windows']} windows; transformers PPL of the same model on the same windows (the run's "
            "perplexity file where the GGUF evaluation did not measure it again).")
    measured_figures = [figure for figure in figures.values() if figure is not None]
    if any(figure.se is not None for figure in measured_figures):
        text += " ± (llama.cpp): one standard error over the windows."
    text += " " + missing_note(measured_figures, "window")
    rows = pd.concat([rows, ppl_rows[ppl_rows.run.isin(used)]])
    keys = {(run, "gguf", outtype, "ppl"): figure for (run, outtype), figure in figures.items() if figure is not None}
    return _table("gguf", "GGUF export", text.strip() + _notes((d["model"] for d in display), notes), display, rows,
                  keys)


LAYOUTS = {"zeroshot": zeroshot_table, "downstream": downstream_table, "gguf": gguf_table}
