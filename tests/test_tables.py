"""pruning.reporting.tables on real runs of stories260K (structured, depth, Wanda; perplexity, zero-shot, speed, GGUF):
every cell equals its metric file, with the uncertainty its per-item data give (recomputed here with
pruning.core.statistics), layouts as in the papers, deterministic bytes, clear errors, no row that mixes two
prunes; and the grid contract (pruning.reporting.grid) that the workflow and the tables share."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

import pruning
from conftest import DATA_DIR, REPO
from pruning.reporting.grid import (GridError, compared_rows, grid_rows, parse_ratio, plot_specs, ratio_token,
                          ratio_token_problem, table_specs, task_fewshot)
from pruning.reporting.plots import write_plots
from pruning.reporting.metric_files import TableError, collect, read_metrics
from pruning.reporting.tables import build_tables, layer_ranges, write_tables
from pruning.reporting.tables.common import fmt_bytes, fmt_ppl
from pruning.core.statistics import (at_chance, chance_rate, indistinguishable, mean_of_independent, mean_se,
                                     paired_difference, paired_perplexity, perplexity_estimate)

MODEL = "stories260K"
EVAL = dict(dataset="wikitext2", seqlen=128, max_windows=4, device="cpu", data_dir_path=str(DATA_DIR))
PRUNED = [  # (grid entry, ratio token, library method, arguments)
    ("wanda", "s0.50", "wanda", dict(sparsity=0.5, save_format="sparse-bitmask")),
    ("depth-angular", "L1", "depth", dict(num_blocks=1, criterion="angular")),
    ("depth-angular", "L2", "depth", dict(num_blocks=2, criterion="angular")),
    ("depth-cosine", "L1", "depth", dict(num_blocks=1, criterion="cosine")),
    ("depth-cosine", "L2", "depth", dict(num_blocks=2, criterion="cosine")),
    ("layers", "f0.40", "layers", dict(fraction=0.4)),
    ("two_stage", "r0.20", "two_stage", dict(prune_rate=0.2)),
]
ZEROSHOT_RUNS = [("dense", "base"), ("layers", "f0.40")]
TASKS = ("arc_easy", "boolq")
UNCERTAINTY = ["n_items", "se", "low", "high", "vs_dense", "vs_dense_se", "vs_dense_ratio", "vs_dense_ratio_low",
               "vs_dense_ratio_high", "indistinguishable", "chance", "majority", "at_chance"]  # the CSV's extra columns


@pytest.fixture(scope="module")
def results(tmp_path_factory, stories_dir):
    """results/metrics of real runs, laid out as the workflow writes them."""
    root = tmp_path_factory.mktemp("tables")
    metrics = root / "results" / "metrics" / MODEL
    models = {("dense", "base"): stories_dir}
    pruning.evaluate_perplexity(str(stories_dir), output=str(metrics / "dense/base/ppl.json"), **EVAL)
    for entry, token, method, arguments in PRUNED:
        out = root / "results" / "models" / MODEL / entry / token
        pruning.prune(str(stories_dir), method, out, calib="c4", nsamples=4, seqlen=64, device="cpu",
                      data_dir_path=str(DATA_DIR), progress=False, **arguments)
        (metrics / entry / token).mkdir(parents=True)
        shutil.copy(out / "prune.json", metrics / entry / token / "prune.json")  # as the prune rule does
        pruning.evaluate_perplexity(str(out), output=str(metrics / entry / token / "ppl.json"), **EVAL)
        models[(entry, token)] = out
    from pruning.evaluation.zeroshot import zeroshot

    for entry, token in ZEROSHOT_RUNS:
        for task in TASKS:
            zeroshot(str(models[(entry, token)]), task, limit=8, device="cpu", data_dir_path=str(DATA_DIR),
                     output=str(metrics / entry / token / f"zeroshot-{task}.json"), quiet=True)
    return root


def read(path):
    return json.loads(path.read_text())


def cells(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def ppl_se(record: dict) -> float:
    """The standard error of a perplexity, from its file's per-window NLLs."""
    return perplexity_estimate(record["per_window"]["nll"], record["per_window"]["scored_tokens"]).se


def ppl_cell(record: dict, dense: dict | None = None) -> str:
    """A perplexity cell as the tables write it: value ± SE, ≈ when within 2 paired SE of dense."""
    text = f"{fmt_ppl(record['ppl'])} ± {fmt_ppl(ppl_se(record))}"
    if dense is not None:
        paired = paired_perplexity(record["per_window"]["nll"], dense["per_window"]["nll"],
                                   record["per_window"]["scored_tokens"])
        text += " ≈" if paired.indistinguishable else ""
    return text


def by_name(metrics) -> dict:
    return {table.name: table for table in build_tables(metrics)}


def value_of(data: pd.DataFrame, method: str, ratio: str, metric: str, file: str = "prune.json"):
    """One number of a table's long-form data."""
    match = data[(data.method == method) & (data.ratio == ratio) & (data.metric == metric) & data.file.str.endswith(file)]
    assert len(match) == 1, (method, ratio, metric, file)
    return match.value.iloc[0]


def test_ratio_tokens_read_back():
    assert [parse_ratio(t).label for t in ("s0.50", "nm2-4", "nm4-8", "L4", "f0.25", "r0.30", "base", "custom")] == \
        ["50%", "2:4", "4:8", "4 blocks", "25%", "30%", "dense", "custom"]
    ordered = sorted(map(parse_ratio, ["nm2-4", "s0.70", "base", "nm4-8", "s0.50"]), key=lambda r: r.order)
    assert [r.label for r in ordered] == ["dense", "50%", "70%", "4:8", "2:4"]  # Wanda paper column order
    with pytest.raises(GridError, match="unknown ratio token 's50'"):
        parse_ratio("s50")


@pytest.mark.parametrize("kind, value, token, parsed", [
    ("sparsity", 0.5, "s0.50", 0.5), ("sparsity", 0.05, "s0.05", 0.05), ("nm", "2:4", "nm2-4", (2, 4)),
    ("nm", "16:32", "nm16-32", (16, 32)), ("num_blocks", 8, "L8", 8), ("fraction", 0.25, "f0.25", 0.25),
    ("prune_rate", 0.3, "r0.30", 0.3)])
def test_ratio_tokens_round_trip(kind, value, token, parsed):
    assert ratio_token_problem(kind, value) is None
    assert ratio_token(kind, value) == token
    assert (parse_ratio(token).kind, parse_ratio(token).value) == (kind, parsed)


def test_ratio_with_more_decimals_than_its_token_is_named():
    """0.525 would be filed as s0.53 (the run of another ratio): the config check refuses it with this text."""
    assert ratio_token_problem("sparsity", 0.525) == "0.525 has more than two decimals (its file token s0.53 would " \
                                                     "not name it)"
    assert ratio_token_problem("fraction", 0.1 + 0.2) is None  # float noise is not a third decimal
    assert ratio_token_problem("prune_rate", 0.301).startswith("0.301 has more than two decimals")


def test_grid_contract_names_the_tables_of_the_library(results, tmp_path):
    """The workflow's table list (from the config rows) and the tables written from the metric files of the
    same grid are the same list, because both ask pruning.reporting.grid."""
    methods = {"wanda": {"method": "wanda", "ratios": {"sparsity": [0.5]}},
               **{e: {"method": "depth", "ratios": {"num_blocks": [1, 2]}, "options": {"criterion": e[6:]}}
                  for e in ("depth-angular", "depth-cosine")},
               "layers": {"method": "layers", "ratios": {"fraction": [0.4]}},
               "two_stage": {"method": "two_stage", "ratios": {"prune_rate": [0.2]}}}
    rows = grid_rows([MODEL], methods)
    assert [(r["method"], r["ratio"]) for r in rows] == [("dense", "base")] + [(e, t) for e, t, _, _ in PRUNED]
    expected = table_specs(rows, ["zeroshot"])
    written = write_tables(collect(results / "results"), tmp_path)
    assert [p.name for p in written] == [f"{spec.name}.{ext}" for spec in expected for ext in ("md", "csv")]
    assert [spec.name for spec in plot_specs(rows)] == [f"sparsity-{MODEL}", f"structured-{MODEL}"]
    assert [spec.name for spec in plot_specs(rows, zeroshot_speed=rows)][-1] == "zeroshot-speed"
    dense_only = [row for row in rows if row["library_method"] == "dense"]
    assert [spec.name for spec in plot_specs(rows, zeroshot_speed=dense_only)] == [f"sparsity-{MODEL}",
                                                                                   f"structured-{MODEL}"]
    assert "torch" not in subprocess.run([sys.executable, "-c", "import sys, pruning.reporting.grid; print(*sys.modules)"],
                                         capture_output=True, text=True, check=True).stdout.split()


def test_depth_table_prunegpt_layout(results):
    runs = collect(results / "results")
    table = by_name(runs)[f"depth-{MODEL}"]
    rows = cells(table.markdown())
    assert rows[0] == ["# Blocks", "#Param", "Angular", "Cosine"]  # PruneGPT's header
    metrics = results / "results" / "metrics" / MODEL
    dense = read(metrics / "dense/base/ppl.json")
    # PruneGPT's Baseline row: the dense PPL under the first criterion, "-" under the others
    assert rows[1] == ["Baseline", f"{dense['parameters']['total'] / 1e3:.1f}K", ppl_cell(dense), "-"]
    for row, blocks in zip(rows[2:], (1, 2)):
        angular, cosine = (read(metrics / f"depth-{c}/L{blocks}/ppl.json") for c in ("angular", "cosine"))
        # one decoder layer of stories260K holds 45,440 parameters
        assert angular["parameters"]["total"] == dense["parameters"]["total"] - blocks * 45440
        assert row == [str(blocks), f"{angular['parameters']['total'] / 1e3:.1f}K", ppl_cell(angular, dense),
                       ppl_cell(cosine, dense)]
    assert "Protocol: WikiText-2 test token-level perplexity, non-overlapping windows of 128 tokens" in table.caption
    assert "Calibration: c4, 4 × 64 tokens, seed 0" in table.caption


def test_layer_removal_table_quark_layout(results):
    runs = collect(results / "results")
    table = by_name(runs)["layer-removal"]
    rows = cells(table.markdown())
    assert rows[0] == ["model", "method", "ratio", "PPL original", "PPL after", "prune ratio", "deleted",
                       "deleted layers"]
    metrics = results / "results" / "metrics" / MODEL
    dense = read(metrics / "dense/base/ppl.json")
    expected = [(e, t) for e, t, m, _ in PRUNED if m in ("depth", "layers", "two_stage")]
    assert [(r[1], r[2]) for r in rows[1:]] == [(e, parse_ratio(t).label) for e, t in sorted(expected)]
    for row in rows[1:]:
        entry, token = row[1], next(t for e, t, _, _ in PRUNED if e == row[1] and parse_ratio(t).label == row[2])
        report = read(metrics / entry / token / "prune.json")["result"]
        assert row[3] == ppl_cell(dense)
        assert row[4] == ppl_cell(read(metrics / entry / token / 'ppl.json'), dense)
        assert row[5] == f"{report['prune_ratio_percent']:.2f}%"
        # Quark's "delete 3 layer [11-13] total 32": the number after "total" is the model's layer count, which
        # every layer-removal method records in its prune.json
        assert report["layers_before"] == 5
        if entry == "two_stage":
            mha, ffn = report["mha_removed_layers"], report["ffn_removed_layers"]
            assert row[6] == f"delete {len(mha)} attention, {len(ffn)} FFN"
            assert row[7] == f"attention {layer_ranges(mha)}; FFN {layer_ranges(ffn)} total 5"
        else:
            removed = report["removed_layers"]
            assert row[6] == f"delete {len(removed)} layer"
            assert row[7] == f"{layer_ranges(removed)} total 5"
    data = table.data
    assert set(data.file[data.file.str.endswith("prune.json")]) == \
        {f"results/metrics/{MODEL}/{e}/{t}/prune.json" for e, t in expected}
    assert "[11-13] total 32 is layers 11 to 13 of a 32-layer model" in table.caption


def test_layer_ranges_quark_notation():
    assert layer_ranges([15, 16, 17, 18]) == "[15-18]"
    assert layer_ranges([25, 3, 10, 11, 12, 13, 14, 17]) == "[3, 10-14, 17, 25]"
    assert layer_ranges([4]) == "[4]"


def test_two_stage_table_layout(results):
    table = by_name(collect(results / "results"))["two-stage"]
    rows = cells(table.markdown())
    assert rows[0] == ["model", "method", "ratio", "MHA layers removed", "FFN layers removed", "params removed",
                       "PPL original", "PPL"]
    metrics = results / "results" / "metrics" / MODEL
    report = read(metrics / "two_stage" / "r0.20" / "prune.json")
    mha, ffn = sorted(report["result"]["mha_removed_layers"]), sorted(report["result"]["ffn_removed_layers"])
    removed = report["parameters"]["before"]["total"] - report["parameters"]["after"]["total"]
    assert len(rows) == 2 and rows[1][:3] == [MODEL, "two_stage", parse_ratio("r0.20").label]
    assert rows[1][3] == f"{len(mha)} {mha}" and rows[1][4] == f"{len(ffn)} {ffn}"
    dense = read(metrics / "dense" / "base" / "ppl.json")
    assert rows[1][6] == ppl_cell(dense)
    assert rows[1][7] == ppl_cell(read(metrics / "two_stage" / "r0.20" / "ppl.json"), dense)
    data = table.data
    before, after = (value_of(data, "two_stage", "r0.20", f"parameters.{when}.total") for when in ("before", "after"))
    assert before - after == removed > 0
    assert f"({report['result']['prune_ratio_percent']:.2f}%)" in rows[1][5]


def accuracy(record: dict, metric: str = "acc") -> tuple[list, float]:
    """A zero-shot file's per-document outcomes of `metric` (its one leaf task) and the chance rate of guessing."""
    (leaf,) = record["per_document"].values()
    options = [len(answers) for answers in leaf.get("loglikelihoods", [])]
    return leaf["values"][metric], (chance_rate(options) if options else 0.0)


def accuracy_cell(record: dict, dense: dict, metric: str = "acc") -> str:
    """An accuracy cell as the tables write it, recomputed from the files: value ± SE, for a pruned run the
    paired Δ ± SE (≈ within 2 of them), and "at chance" when the dense run does not beat guessing by 2 SE."""
    values, _ = accuracy(record, metric)
    dense_values, chance = accuracy(dense, metric)
    text = f"{100 * record['metrics'][metric]['value']:.2f} ± {100 * mean_se(values).se:.1f}"
    if record is not dense:
        difference = paired_difference(values, dense_values)
        mark = " ≈" if indistinguishable(difference) else ""
        text += f" (Δ {100 * difference.mean:+.1f} ± {100 * difference.se:.1f}{mark})"
    return text + (" at chance" if at_chance(mean_se(dense_values), chance) else "")


def test_zeroshot_table_with_uncertainty_and_chance(results):
    """Every accuracy with its SE, the pruned run's paired Δ against dense on the same documents, the tasks
    the dense model answers at chance flagged and left out of the Average, and a smoke-run line driven by
    the measured standard errors (8 documents per task here)."""
    table = by_name(collect(results / "results"))["zeroshot"]
    rows = cells(table.markdown())
    assert rows[0] == ["model", "method", "ratio", *TASKS, "Average"]
    metrics = results / "results" / "metrics" / MODEL
    dense = {task: read(metrics / "dense" / "base" / f"zeroshot-{task}.json") for task in TASKS}
    informative = [t for t in TASKS if not at_chance(mean_se(accuracy(dense[t])[0]), accuracy(dense[t])[1])]
    for row, (entry, token) in zip(rows[1:], ZEROSHOT_RUNS):
        records = {task: read(metrics / entry / token / f"zeroshot-{task}.json") for task in TASKS}
        assert row[3:5] == [accuracy_cell(records[task], dense[task] if entry != "dense" else records[task])
                            for task in TASKS]
        if not informative:
            assert row[5] == "—"
        else:
            estimate = mean_of_independent([mean_se(accuracy(records[t])[0]) for t in informative])
            assert row[5].startswith(f"{100 * estimate.mean:.2f} ± {100 * estimate.se:.1f}")
    assert len(rows) == 1 + len(ZEROSHOT_RUNS)
    assert table.caption.startswith("Protocol: lm-evaluation-harness, metric acc × 100, 0-shot, first 8 documents")
    assert "Average over the tasks of the row that are not at chance" in table.caption
    flagged = [t for t in TASKS if t not in informative]
    if flagged:
        assert "At chance — not informative for this model" in table.caption
        assert all(f"{ {'arc_easy': 'ARC-Easy', 'boolq': 'BoolQ'}[t]} (dense " in table.caption for t in flagged)
    worst = max(mean_se(accuracy(dense[t])[0]).se for t in TASKS)
    assert worst > 0.015 and "Smoke run, large uncertainty: standard errors of" in table.caption
    assert "over 8 documents per task" in table.caption


def test_uncertainty_columns_of_the_csv(results):
    """The CSV's uncertainty columns on the headline rows equal the statistics of the files' per-item data:
    an accuracy's SE, 2-SE interval, chance and flag; a perplexity's exp-mapped interval and its paired ratio
    to dense; the other rows leave them empty."""
    tables = by_name(collect(results / "results"))
    metrics = results / "results" / "metrics" / MODEL
    data = tables["zeroshot"].data
    shown = data[data.metric == "metrics.acc.value"]
    assert len(shown) == len(ZEROSHOT_RUNS) * len(TASKS)
    for row in shown.itertuples():
        record, reference = (read(metrics / e / t / f"zeroshot-{row.key}.json") for e, t in
                             ((row.method, row.ratio), ("dense", "base")))
        values, chance = accuracy(record)
        estimate = mean_se(values)
        assert (row.n_items, row.se, row.low, row.high, row.chance) == (8, pytest.approx(estimate.se), pytest.approx(
            estimate.low), pytest.approx(estimate.high), pytest.approx(chance))
        assert row.at_chance == at_chance(mean_se(accuracy(reference)[0]), accuracy(reference)[1])
        if row.method == "dense":
            assert row.vs_dense is None and row.indistinguishable is None
        else:
            difference = paired_difference(values, accuracy(reference)[0])
            assert (row.vs_dense, row.vs_dense_se) == (pytest.approx(difference.mean), pytest.approx(difference.se))
    assert data[data.metric != "metrics.acc.value"][UNCERTAINTY].isna().all().all()
    sparsity = tables[f"sparsity-{MODEL}"].data
    dense, wanda = (read(metrics / e / t / "ppl.json") for e, t in (("dense", "base"), ("wanda", "s0.50")))
    row = sparsity[(sparsity.method == "wanda") & (sparsity.metric == "ppl")].iloc[0]
    estimate = perplexity_estimate(wanda["per_window"]["nll"], wanda["per_window"]["scored_tokens"])
    assert row.low < row.value < row.high and row.n_items == 4
    assert (row.low, row.high) == (pytest.approx(estimate.low), pytest.approx(estimate.high))
    assert math.log(row.high / row.value) == pytest.approx(2 * estimate.nll.se)
    paired = paired_perplexity(wanda["per_window"]["nll"], dense["per_window"]["nll"], [127] * 4)
    assert row.vs_dense_ratio == pytest.approx(wanda["ppl"] / dense["ppl"])
    assert (row.vs_dense_ratio_low, row.vs_dense_ratio_high) == (pytest.approx(paired.low), pytest.approx(paired.high))
    assert row.indistinguishable == paired.indistinguishable


def strip_per_item_data(folder: Path) -> None:
    """Rewrite every metric file under `folder` as it was written before per-item records existed."""
    for path in folder.rglob("*.json"):
        record = read(path)
        record.pop("per_window", None)
        record.pop("per_document", None)
        path.write_text(json.dumps(record))


def test_old_metric_files_without_per_item_data_still_read(results, tmp_path):
    """Files from before per-item records: every table is built, no cell carries a ± or a flag, the captions
    say why, and the Average is the plain mean over every task as before."""
    copy = tmp_path / "results"
    shutil.copytree(results / "results" / "metrics", copy / "metrics")
    strip_per_item_data(copy / "metrics")
    tables = by_name(collect(copy))
    for name in ("zeroshot", f"sparsity-{MODEL}", f"depth-{MODEL}", "summary", "layer-removal"):
        body = tables[name].markdown().split("\n\n", 2)[2]
        assert "±" not in body and "≈" not in body and "at chance" not in body, name
        assert "Smoke run" not in tables[name].caption
        assert tables[name].data[UNCERTAINTY[1:]].isna().all().all(), name
    assert "without per-document data" in tables["zeroshot"].caption
    assert "without per-window data" in tables[f"sparsity-{MODEL}"].caption
    metrics = copy / "metrics" / MODEL
    for row, (entry, token) in zip(cells(tables["zeroshot"].markdown())[1:], ZEROSHOT_RUNS):
        values = [read(metrics / entry / token / f"zeroshot-{t}.json")["metrics"]["acc"]["value"] for t in TASKS]
        assert row[3:] == [f"{100 * v:.2f}" for v in values] + [f"{100 * sum(values) / len(values):.2f}"]


def test_pruned_runs_on_other_windows_are_not_paired(results, tmp_path):
    """A dense perplexity over other windows (fewer of them) is no reference for a paired comparison: the
    pruned cells keep their own ± but no ≈ and no Δ, and the caption says why."""
    copy = tmp_path / "results"
    shutil.copytree(results / "results" / "metrics", copy / "metrics")
    dense = copy / "metrics" / MODEL / "dense" / "base" / "ppl.json"
    pruning.evaluate_perplexity(str(REPO.parent / "shared/models/stories260K"), output=str(dense), overwrite=True,
                                **{**EVAL, "max_windows": 3})
    table = by_name(collect(copy))[f"sparsity-{MODEL}"]
    assert "Not paired with dense, measured on other windows (windows differ)." in table.caption
    wanda = read(copy / "metrics" / MODEL / "wanda" / "s0.50" / "ppl.json")
    assert cells(table.markdown())[1][2] == ppl_cell(wanda)
    assert table.data[["vs_dense", "vs_dense_ratio", "indistinguishable"]].isna().all().all()


def test_without_a_dense_run_nothing_is_paired_or_flagged(results):
    """Chance flags and paired differences come from the model's dense run: without it the pruned cells keep
    their own ± only."""
    runs = collect(results / "results")
    table = build_tables(runs[runs.method != "dense"].reset_index(drop=True))
    (zeroshot,) = [t for t in table if t.name == "zeroshot"]
    (row,) = cells(zeroshot.markdown())[1:]
    assert all(" ± " in cell and "Δ" not in cell and "at chance" not in cell for cell in row[3:5])
    assert zeroshot.data[["vs_dense", "at_chance"]].isna().all().all()


def test_summary_sizes_and_quality(results):
    runs = collect(results / "results")
    table = by_name(runs)["summary"]
    data = table.data
    dense, wanda, layers = ({metric: value_of(data, method, token, metric, "ppl.json")
                             for metric in ("ppl", "parameters.total", "parameters.nonzero")}
                            for method, token in (("dense", "base"), ("wanda", "s0.50"), ("layers", "f0.40")))
    rows = {(r[1], r[2]): r for r in cells(table.markdown())[1:]}
    header = cells(table.markdown())[0]
    bytes_column = header.index("size reduction (bytes)")
    nonzero_column = header.index("size reduction (non-zero params)")
    # unstructured zeros shrink the non-zero count, not the dense bytes; removed layers shrink both
    assert rows[("wanda", "50%")][bytes_column] == "0.0%"
    assert rows[("wanda", "50%")][nonzero_column] == \
        f"{1 - wanda['parameters.nonzero'] / dense['parameters.nonzero']:.1%}"
    assert rows[("layers", "40%")][header.index("weights (dense storage)")] == \
        f"{layers['parameters.total'] * 4 / 1e3:.1f} kB"  # float32
    assert rows[("layers", "40%")][bytes_column] == f"{1 - layers['parameters.total'] / dense['parameters.total']:.1%}"
    # the PPL difference with its paired SE on the same windows (pruning.core.statistics, delta method)
    dense_record, layers_record = (read(results / "results" / "metrics" / MODEL / e / t / "ppl.json")
                                   for e, t in (("dense", "base"), ("layers", "f0.40")))
    paired = paired_perplexity(layers_record["per_window"]["nll"], dense_record["per_window"]["nll"],
                               dense_record["per_window"]["scored_tokens"])
    change = layers["ppl"] - dense["ppl"]
    assert paired.difference.mean == pytest.approx(change) and paired.difference.se > 0
    assert rows[("layers", "40%")][header.index("quality change (PPL)")] == \
        f"{change:+.2f} ± {paired.difference.se:.2f} ({change / dense['ppl']:+.1%})"
    assert rows[("layers", "40%")][header.index("PPL")] == ppl_cell(layers_record, dense_record)
    # the checkpoint as prune saved it: the bitmask layout stores the 50 % zeros as bits
    stored = read(results / "results" / "metrics" / MODEL / "wanda" / "s0.50" / "prune.json")["checkpoint"]
    dense_bytes = dense["parameters.total"] * 4
    assert rows[("wanda", "50%")][header.index("checkpoint on disk")] == \
        f"{fmt_bytes(stored['safetensors_bytes'])} sparse-bitmask ({1 - stored['safetensors_bytes'] / dense_bytes:.1%} smaller)"
    assert stored["safetensors_bytes"] < 0.7 * dense_bytes
    removed = read(results / "results" / "metrics" / MODEL / "layers" / "f0.40" / "prune.json")["checkpoint"]
    assert removed["format"] == "dense" and rows[("layers", "40%")][header.index("checkpoint on disk")] == \
        f"{fmt_bytes(removed['safetensors_bytes'])} dense ({1 - removed['safetensors_bytes'] / dense_bytes:.1%} smaller)"
    assert next(r for (m, _), r in rows.items() if m == "dense")[header.index("checkpoint on disk")] == "—"
    assert "speed change (prefill / decode)" not in header  # no speed.json yet


def test_speed_column_from_speed_files(results, tmp_path):
    """Measured speed.json (HF) for the dense and the layer-pruned model: the change column reads them."""
    copy = tmp_path / "results"
    shutil.copytree(results / "results" / "metrics", copy / "metrics")
    from pruning.evaluation.speed import speed

    for entry, token, model in (("dense", "base", str(REPO.parent / "shared/models/stories260K")),
                                ("layers", "f0.40", str(results / "results/models" / MODEL / "layers/f0.40"))):
        speed(model, prompt_tokens=8, new_tokens=2, repeats=1, warmup=0, device="cpu", threads=1,
              output=str(copy / "metrics" / MODEL / entry / token / "speed.json"))
    table = by_name(collect(copy))["summary"]
    header, *rows = cells(table.markdown())
    column = header.index("speed change (prefill / decode)")
    metrics = copy / "metrics" / MODEL
    dense, layers = (read(metrics / f"{e}/{t}/speed.json")["hf"] for e, t in (("dense", "base"), ("layers", "f0.40")))
    row = next(r for r in rows if r[1] == "layers")
    assert row[column] == (f"{layers['prefill_tokens_per_s'] / dense['prefill_tokens_per_s'] - 1:+.1%} / "
                           f"{layers['decode_tokens_per_s'] / dense['decode_tokens_per_s'] - 1:+.1%}")
    assert next(r for r in rows if r[1] == "wanda")[column] == "—"  # not measured
    spread = header.index("decode tokens/s (median [min–max])")
    assert row[spread] == f"{layers['decode_tokens_per_s']:.0f} [{layers['decode_tokens_per_s']:.0f}–" \
                          f"{layers['decode_tokens_per_s']:.0f}]"  # one repeat: no spread


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python not installed (bash scripts/setup.sh installs it)")
def test_gguf_table(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results / "results" / "metrics", copy / "metrics")
    from pruning.evaluation.llamacpp import evaluate_gguf
    from pruning.export.gguf import export_gguf

    model = results / "results/models" / MODEL / "wanda/s0.50"
    export_gguf(model, tmp_path / "model-f16.gguf", "f16")
    record = evaluate_gguf(tmp_path / "model-f16.gguf", model, seqlen=128, max_windows=2, data_dir=str(DATA_DIR),
                           generate_tokens=0, output=copy / "metrics" / MODEL / "wanda/s0.50/gguf-f16.json")
    table = by_name(collect(copy))["gguf"]
    header, row = cells(table.markdown())
    assert header == ["model", "method", "ratio", "type", "GGUF size", "PPL (llama.cpp)", "PPL (transformers)",
                      "difference"]
    assert row == [MODEL, "wanda", "50%", "f16", f"{record['gguf']['bytes'] / 1e3:.1f} kB", ppl_cell(record),
                   f"{record['reference']['ppl']:.2f}", f"{record['relative_difference']:+.2%}"]
    assert len(record["per_window"]["nll"]) == 2 and " ± (llama.cpp): one standard error over the windows." in table.caption


def test_written_tables_are_deterministic_and_traceable(results, tmp_path):
    runs = collect(results / "results")
    first = write_tables(runs, tmp_path / "a")
    second = write_tables(collect(results / "results"), tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    names = sorted(p.name for p in first)
    assert names == sorted(f"{n}.{ext}" for n in ("summary", f"sparsity-{MODEL}", f"depth-{MODEL}", "layer-removal",
                                                  "two-stage", "zeroshot", "downstream", "comparison", "impact")
                           for ext in ("md", "csv"))
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    for csv in (p for p in first if p.suffix == ".csv"):  # long form: every value is the one in its file
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        assert list(frame.columns) == ["model", "method", "ratio", "key", "metric", "value", "file", *UNCERTAINTY], csv.name
        assert len(frame) > 0
        for row in frame.itertuples():
            record = read(results / row.file)
            for part in row.metric.split("."):
                record = record[part]
            assert row.value == ("" if record is None else str(record)), f"{csv.name}: {row.file} {row.metric}"
            assert row.file == f"results/metrics/{row.model}/{row.method}/{row.ratio}/{Path(row.file).name}"
    plots = write_plots(runs, tmp_path / "plots")
    assert [p.name for p in plots] == [f"sparsity-{MODEL}.png", f"structured-{MODEL}.png"]


@pytest.mark.slow
def test_unknown_metric_file_and_empty_results_are_errors(results, tmp_path):
    stray = tmp_path / "metrics" / MODEL / "dense" / "base" / "ppl-old.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    with pytest.raises(TableError, match="not a metric file name"):
        read_metrics([stray])
    result = subprocess.run([sys.executable, "-m", "pruning", "tables", "--results", str(tmp_path / "nothing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nothing/metrics does not exist: no runs to tabulate" in result.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_run_mixing_two_prunes_is_refused(results, tmp_path):
    """A failed workflow job must not leave a row that mixes an old measurement with a new model: a ppl.json
    that measured an earlier prune with the same options (another run id, however new the file), one that
    measured other options, one from before run ids that is older than its prune.json, or a prune.json gone
    (its prune job failed) are refused in one line naming the file, exit code 2, nothing written. File times
    decide only for files without run ids: a copy that does not keep them is accepted."""
    def case(name, change) -> tuple[Path, str]:
        copy = tmp_path / name / "results"
        shutil.copytree(results / "results" / "metrics", copy / "metrics")  # keeps the times
        folder = copy / "metrics" / MODEL / "wanda" / "s0.50"
        return copy, change(folder)

    def rewrite(path, change):
        data = read(path)
        change(data)
        path.write_text(json.dumps(data))

    def pruned_again(folder):  # the prune re-ran with the same options after the evaluation, whose new run failed
        recorded = read(folder / "ppl.json")["model"]["pruning"]["run_id"]
        assert read(folder / "prune.json")["run_id"] == recorded and len(recorded) == 32
        rewrite(folder / "prune.json", lambda report: report.update(run_id=uuid.uuid4().hex))
        (folder / "ppl.json").touch()  # a newer file time does not hide it
        return f"{folder / 'ppl.json'} measured an earlier prune of this run (run_id {recorded}, not "

    def pruned_again_before_run_ids(folder):  # the same, with files written before run ids: their times decide
        rewrite(folder / "prune.json", lambda report: report.pop("run_id"))
        rewrite(folder / "ppl.json", lambda record: record["model"]["pruning"].pop("run_id"))
        later = (folder / "ppl.json").stat().st_mtime_ns + 10**9
        os.utime(folder / "prune.json", ns=(later, later))
        return f"{folder / 'ppl.json'} is older than {folder / 'prune.json'}"

    def other_options(folder):  # the config changed and only the prune ran again
        report, written = read(folder / "prune.json"), (folder / "prune.json").stat().st_mtime_ns
        report["options"]["target"]["sparsity"] = 0.6
        (folder / "prune.json").write_text(json.dumps(report))
        os.utime(folder / "prune.json", ns=(written, written))
        return f"{folder / 'ppl.json'} measured another prune than {folder / 'prune.json'}"

    def prune_failed(folder):  # Snakemake removed the outputs of the failed prune job
        (folder / "prune.json").unlink()
        return f"{folder}: ppl.json without prune.json"

    for change in (pruned_again, pruned_again_before_run_ids, other_options, prune_failed):
        copy, message = case(change.__name__, change)
        with pytest.raises(TableError, match="re-run"):
            collect(copy)
        result = subprocess.run([sys.executable, "-m", "pruning", "tables", "--results", str(copy),
                                 "--plots", str(copy / "plots")], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (copy / "tables").exists() and not (copy / "plots").exists()
    copy, _ = case("untouched", lambda folder: "")
    assert collect(copy).run.nunique() == 1 + len(PRUNED)

    def copied_without_times(folder):  # cp -r: every file gets the time of its copy, in any order
        later = (folder / "ppl.json").stat().st_mtime_ns + 10**9
        os.utime(folder / "prune.json", ns=(later, later))
    copy, _ = case("copied", copied_without_times)
    assert collect(copy).run.nunique() == 1 + len(PRUNED)


# ---- the documents' cross-method layouts, on a copy with per-task shots, speed and GGUF measured ----------

SHOTS = {"winogrande": 5, "boolq": 0, "arc_easy": 0, "gsm8k": 1}  # PruneGPT's per-task shots, smaller for speed
MEASURED = [("dense", "base"), ("layers", "f0.40"), ("wanda", "s0.50")]  # zero-shot and speed, in table order
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def test_task_fewshot_and_compared_rows():
    assert task_fewshot(["boolq", "gsm8k"], 3) == {"boolq": 3, "gsm8k": 3}
    assert task_fewshot(["boolq", "gsm8k", "winogrande"], {"gsm8k": 5, "winogrande": 5}) == \
        {"boolq": 0, "gsm8k": 5, "winogrande": 5}
    with pytest.raises(GridError, match="'winogrand' not in zeroshot.tasks"):
        task_fewshot(["winogrande"], {"winogrand": 5})
    methods = {"wanda": {"method": "wanda", "ratios": {"sparsity": [0.7, 0.5], "nm": ["4:8", "2:4"]}},
               "angular": {"method": "depth", "ratios": {"num_blocks": [4, 2]}, "models": ["a"]}}
    picked = [(r["model"], r["method"], r["ratio"]) for r in compared_rows(grid_rows(["a", "b"], methods))]
    assert picked == [("a", "wanda", "s0.50"), ("a", "wanda", "nm2-4"), ("b", "wanda", "s0.50"),
                      ("b", "wanda", "nm2-4"), ("a", "angular", "L2")]
    assert compared_rows([r for r in grid_rows(["a"], methods) if r["method"] != "dense"]) == []  # no baseline


@pytest.fixture(scope="module")
def measured(results, tmp_path_factory):
    """The runs above plus zero-shot with per-task shots (GSM8K included), speed.json and, with llama.cpp,
    GGUF q4_k_m on the dense, Wanda 50 % and layer-pruned rows."""
    from pruning.evaluation.speed import speed
    from pruning.evaluation.zeroshot import zeroshot

    root = tmp_path_factory.mktemp("measured") / "results"
    shutil.copytree(results / "results" / "metrics", root / "metrics")
    for path in (root / "metrics").glob("*/*/*/zeroshot-*.json"):
        path.unlink()  # measured again below, with the shots of SHOTS
    models = {(e, t): results / "results/models" / MODEL / e / t for e, t in MEASURED}
    models[("dense", "base")] = REPO.parent / "shared/models/stories260K"
    for (entry, token), model in models.items():
        folder = root / "metrics" / MODEL / entry / token
        for task, shots in SHOTS.items():
            zeroshot(str(model), task, limit=2 if task == "gsm8k" else 8, num_fewshot=shots, device="cpu",
                     data_dir_path=str(DATA_DIR), output=str(folder / f"zeroshot-{task}.json"), quiet=True)
        speed(str(model), prompt_tokens=8, new_tokens=4, repeats=3, warmup=0, device="cpu", threads=1,
              output=str(folder / "speed.json"))
        if HAS_LLAMA_CPP and entry != "layers":
            from pruning.evaluation.llamacpp import evaluate_gguf
            from pruning.export.gguf import export_gguf

            gguf = root.parent / f"{entry}-q4_k_m.gguf"
            export_gguf(model, gguf, "q4_k_m")
            evaluate_gguf(gguf, model, seqlen=128, max_windows=2, data_dir=str(DATA_DIR), generate_tokens=0,
                          output=folder / "gguf-q4_k_m.json")
    return root


def headline(record: dict) -> float:
    return record["metrics"][headline_name(record)]["value"]


def headline_name(record: dict) -> str:
    return next(n for n in ("exact_match,strict-match", "acc_norm", "acc") if n in record["metrics"])


def measured_file(root, entry, token, name):
    return read(root / "metrics" / MODEL / entry / token / name)


def informative_average(root, entry, token, tasks) -> tuple[float, float, object] | None:
    """(mean, SE, paired difference from dense) of the headline metric over the tasks the dense model beats
    chance on, recomputed from the files; None when every task is at chance."""
    records = {t: measured_file(root, entry, token, f"zeroshot-{t}.json") for t in tasks}
    dense = {t: measured_file(root, "dense", "base", f"zeroshot-{t}.json") for t in tasks}
    kept = [t for t in tasks if not at_chance(mean_se(accuracy(dense[t], headline_name(dense[t]))[0]),
                                              accuracy(dense[t], headline_name(dense[t]))[1])]
    if not kept:
        return None
    estimate = mean_of_independent([mean_se(accuracy(records[t], headline_name(records[t]))[0]) for t in kept])
    difference = mean_of_independent([paired_difference(accuracy(records[t], headline_name(records[t]))[0],
                                                        accuracy(dense[t], headline_name(dense[t]))[0]) for t in kept])
    return estimate.mean, estimate.se, difference


@pytest.mark.slow
def test_downstream_table_prunegpt_layout(measured):
    table = by_name(collect(measured))["downstream"]
    header, *rows = cells(table.markdown())
    assert header == ["task", f"{MODEL} · dense", f"{MODEL} · layers · 40%", f"{MODEL} · wanda · 50%"]
    assert [r[0] for r in rows] == ["Winogrande (5-shot)", "BoolQ (0-shot)", "ARC-Easy (0-shot)", "GSM8K (1-shot)",
                                    "Average"]
    tasks = ("winogrande", "boolq", "arc_easy", "gsm8k")
    for column, (entry, token) in enumerate(MEASURED, start=1):
        records = [measured_file(measured, entry, token, f"zeroshot-{task}.json") for task in tasks]
        dense = [measured_file(measured, "dense", "base", f"zeroshot-{task}.json") for task in tasks]
        assert [r[column] for r in rows[:-1]] == [
            accuracy_cell(record, record if entry == "dense" else reference, headline_name(record))
            for record, reference in zip(records, dense)]
        average = informative_average(measured, entry, token, tasks)
        if average is None:
            assert rows[-1][column] == "—"
        else:
            assert rows[-1][column].startswith(f"{100 * average[0]:.2f} ± {100 * average[1]:.1f}")
    assert ("each task's headline metric × 100 (Winogrande acc, BoolQ acc, ARC-Easy acc_norm, GSM8K exact_match "
            "(strict-match filter))") in table.caption
    assert "first 2, 8 documents per task" in table.caption
    shown = table.data[table.data.metric.str.startswith("metrics.")]
    assert sorted(set(shown.metric)) == ["metrics.acc.value", "metrics.acc_norm.value",
                                         "metrics.exact_match,strict-match.value"]
    assert len(shown) == 4 * len(MEASURED)
    gsm8k = shown[shown.metric == "metrics.exact_match,strict-match.value"]
    assert (gsm8k.chance == 0.0).all() and (gsm8k.n_items == 2).all()  # a free answer: guessing scores 0


def test_downstream_table_shows_tasks_an_offline_run_left_out(measured):
    """PruneGPT's MMLU (hub only) in an offline run: its row in PruneGPT's order (before GSM8K) reads
    "— (online only)" in every column, the caption says why, and the Average is the one without it."""
    from pruning.reporting.tables import build_tables

    plain = {t.name: t for t in build_tables(collect(measured))}["downstream"]
    table = {t.name: t for t in build_tables(collect(measured), skipped_tasks={"mmlu": 5},
                                             skip_reason="HF_HUB_OFFLINE is set")}["downstream"]
    header, *rows = cells(table.markdown())
    assert [r[0] for r in rows] == ["Winogrande (5-shot)", "BoolQ (0-shot)", "ARC-Easy (0-shot)", "MMLU (5-shot)",
                                    "GSM8K (1-shot)", "Average"]
    assert rows[3][1:] == ["— (online only)"] * (len(header) - 1)
    assert rows[-1] == cells(plain.markdown())[-1]
    assert ("— (online only): MMLU has no local copy and this run was offline (HF_HUB_OFFLINE is set); an online run "
            "fills it in, the Average leaves it out.") in table.caption


def speedup_cell(root, entry, token) -> str:
    """`1.23× [1.10–1.31]`: decode tokens/s against dense, medians, and the range over the repeats."""
    own, dense = (measured_file(root, e, t, "speed.json")["hf"] for e, t in ((entry, token), ("dense", "base")))
    def rate(record, at):  # decode tokens/s of the repeat that took the `at` time
        return record["decode_tokens_per_s"] * record["decode_seconds"]["median"] / record["decode_seconds"][at]

    return (f"{own['decode_tokens_per_s'] / dense['decode_tokens_per_s']:.2f}× "
            f"[{rate(own, 'max') / rate(dense, 'min'):.2f}–{rate(own, 'min') / rate(dense, 'max'):.2f}]")


@pytest.mark.slow
def test_comparison_table_skill_layout(measured):
    table = by_name(collect(measured))["comparison"]
    header, *rows = cells(table.markdown())
    assert header == ["model", "Method", "entry", "setting", "Accuracy Loss", "PPL change", "Speed",
                      "Speed (llama.cpp)", "Memory", "memory (bytes)", "memory (GGUF q4_k_m)", "Retraining Needed"]
    # the document's order: the mask-based method at 50 %, then the smallest ratio of each structured entry
    assert [(r[1], r[2], r[3]) for r in rows] == [("Wanda", "wanda", "50%"), ("Structured", "depth-angular", "1 block"),
                                                  ("Structured", "depth-cosine", "1 block"),
                                                  ("Structured", "layers", "40%"), ("Structured", "two_stage", "20%")]
    dense_ppl = measured_file(measured, "dense", "base", "ppl.json")
    for row in rows:
        entry, token = row[2], {"1 block": "L1", "40%": "f0.40", "20%": "r0.20", "50%": "s0.50"}[row[3]]
        ppl = measured_file(measured, entry, token, "ppl.json")
        change = ppl["ppl"] - dense_ppl["ppl"]
        paired = paired_perplexity(ppl["per_window"]["nll"], dense_ppl["per_window"]["nll"], [127] * 4)
        assert row[5] == (f"{change:+.2f} ± {paired.difference.se:.2f} ({change / dense_ppl['ppl']:+.1%})"
                          + (" ≈" if paired.indistinguishable else ""))
        stored = measured_file(measured, entry, token, "prune.json")["checkpoint"]
        assert row[8] == f"{stored['safetensors_bytes'] / (dense_ppl['parameters']['total'] * 4) - 1:+.1%}"
        assert row[11] == "No"
        assert row[7] == "—"  # speed.json measured no GGUF
        if (entry, token) in MEASURED:
            average = informative_average(measured, entry, token, SHOTS)
            if average is None:  # every task at chance for stories260K: no average to lose
                assert row[4] == "—"
            else:
                change = average[2]  # pruned minus dense: negative is a loss, as the document writes it
                assert row[4] == f"{100 * change.mean:+.2f}% ± {100 * change.se:.2f}" + (
                    " ≈" if indistinguishable(change) else "")
            assert row[6] == speedup_cell(measured, entry, token)
        else:  # not measured: a dash, never a number
            assert row[4] == row[6] == "—"
        if HAS_LLAMA_CPP and entry == "wanda":
            assert row[10] == fmt_bytes(measured_file(measured, entry, token, "gguf-q4_k_m.json")["gguf"]["bytes"])
        else:
            assert row[10] == "—"
    assert "decode tokens/s at batch 1 against the dense model (8-token prompt, 4 new tokens, " \
           "1 thread(s) on cpu)" in table.caption


@pytest.mark.slow
def test_impact_table_per_method_family(measured):
    table = by_name(collect(measured))["impact"]
    header, *rows = cells(table.markdown())
    assert header == ["method family", "methods", "runs", "size reduction (non-zero params)",
                      "size reduction (dense bytes)", "speed improvement (decode, HF)", "quality impact (PPL)",
                      "quality impact", "quality impact (zero-shot points)"]
    families = {"layer/depth pruning": [(e, t) for e, t, m, _ in PRUNED if m in ("depth", "layers")],
                "Wanda / SparseGPT": [("wanda", "s0.50")], "two-stage": [("two_stage", "r0.20")]}
    assert [r[0] for r in rows] == list(families)
    dense = measured_file(measured, "dense", "base", "ppl.json")
    dense_speed = measured_file(measured, "dense", "base", "speed.json")["hf"]["decode_tokens_per_s"]

    def span(values, fmt):
        low, high = fmt(min(values)), fmt(max(values))
        return low if low == high else f"{low} – {high}"

    for row in rows:
        runs = families[row[0]]
        ppl = [measured_file(measured, e, t, "ppl.json") for e, t in runs]
        assert row[1] == ", ".join(dict.fromkeys(e for e, _ in sorted(runs))) and row[2] == str(len(runs))
        assert row[3] == span([1 - p["parameters"]["nonzero"] / dense["parameters"]["nonzero"] for p in ppl],
                              "{:.1%}".format)
        assert row[4] == span([1 - p["parameters"]["total"] / dense["parameters"]["total"] for p in ppl], "{:.1%}".format)
        assert row[6] == span([p["ppl"] / dense["ppl"] - 1 for p in ppl], "{:+.1%}".format)
        timed = [(e, t) for e, t in runs if (e, t) in MEASURED]
        assert row[5] == (span([measured_file(measured, e, t, "speed.json")["hf"]["decode_tokens_per_s"] / dense_speed - 1
                                for e, t in timed], "{:+.1%}".format) if timed else "—")
    assert rows[1][4] == "0.0%" != rows[1][3]  # Wanda zeros weights: no bytes saved when stored densely
    for row in rows:  # every numeric range reads low – high
        for cell in row[3:7] + row[8:]:
            if " – " in cell:
                low, high = (float(part.rstrip("%")) for part in cell.split(" – "))
                assert low <= high, (row[0], cell)


@pytest.mark.slow
def test_plots_from_measured_runs(measured, tmp_path, monkeypatch):
    runs = collect(measured)
    first, second = write_plots(runs, tmp_path / "a"), write_plots(collect(measured), tmp_path / "b")
    assert [p.name for p in first] == [f"sparsity-{MODEL}.png", f"structured-{MODEL}.png", "zeroshot-speed.png"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", a.name
    from pruning.reporting import plots
    from pruning.reporting.plots import plot_sparsity, plot_structured, plot_zeroshot_speed
    from pruning.reporting.metric_files import Results

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    results = Results(runs)
    plot_sparsity(results, MODEL, tmp_path / "s.png")
    (axes,) = drawn.pop().axes
    bars = [c for c in axes.containers if c.has_yerr]
    assert bars  # the perplexity points carry their 2-SE intervals: the wanda 50 % bar spans exactly that
    wanda = measured_file(measured, "wanda", "s0.50", "ppl.json")
    estimate = perplexity_estimate(wanda["per_window"]["nll"], wanda["per_window"]["scored_tokens"])
    spans = [tuple(sorted(segment[:, 1])) for c in bars for segment in c.lines[2][0].get_segments()]
    assert (pytest.approx(estimate.low), pytest.approx(estimate.high)) in spans
    plot_structured(results, MODEL, tmp_path / "t.png")
    for figure in (axes, drawn.pop().axes[0]):  # dense drawn once; a curve starts there, a single point stands alone
        labels = figure.get_legend_handles_labels()[1]
        assert labels.count("dense") == 1
        for container in figure.containers:
            line = container.lines[0]
            single = len(line.get_xdata()) == 1
            assert (line.get_linestyle() == "None") == single, line.get_label()
            assert single or line.get_xdata()[0] == 0
    plot_zeroshot_speed(results, tmp_path / "z.png")
    (axes,) = drawn.pop().axes
    if all(informative_average(measured, e, t, SHOTS) is None for e, t in MEASURED):  # every task at chance
        assert [text.get_text() for text in axes.texts] == [
            f"no zero-shot average for {MODEL}: no task above chance (or one not measured)"]
        assert axes.containers == [] and axes.get_legend() is None

    without_dense = Results(runs[runs.method != "dense"].reset_index(drop=True))
    assert plot_structured(without_dense, MODEL, tmp_path / "x.png") is None  # no baseline, no plot
    assert plot_zeroshot_speed(without_dense, tmp_path / "y.png") is None and not list(tmp_path.glob("[xy].png"))


def test_installing_a_prune_replaces_the_model_and_its_measurements(tmp_path):
    """`install_pruned_model` (the workflow's install_model job): the finished prune becomes the run's model, its
    prune.json the run's record, and the measurements of the model it replaces go; nothing else in the folder
    is touched, and it refuses a directory that is not a finished prune."""
    from pruning.core.io import OutputError
    from pruning.reporting.metric_files import install_pruned_model

    new, dest, metrics = tmp_path / "models/wanda/s0.50.new", tmp_path / "models/wanda/s0.50", tmp_path / "metrics"
    new.mkdir(parents=True)
    report = json.dumps({"method": "wanda", "versions": {"pruning": pruning.__version__}, "run_id": "new"})
    (new / "prune.json").write_text(report)
    (new / "model.safetensors").write_bytes(b"weights")
    metrics.mkdir()
    for name in ("ppl.json", "zeroshot-boolq.json", "gguf-f16.json", "speed.json"):
        (metrics / name).write_text('{"pruning": {"run_id": "old"}}')
    (metrics / "notes.txt").write_text("mine\n")
    install_pruned_model(new, dest, metrics / "prune.json")
    assert not new.exists() and (dest / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in metrics.iterdir()) == ["notes.txt", "prune.json"]
    assert (metrics / "prune.json").read_text() == report
    with pytest.raises(OutputError, match="exists: a pruned model is installed only where none is"):
        install_pruned_model(dest, dest, tmp_path / "other" / "prune.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputError, match="not a finished prune"):
        install_pruned_model(tmp_path / "empty", tmp_path / "elsewhere", tmp_path / "other" / "prune.json")


@pytest.fixture(scope="module")
def informative(results, tmp_path_factory):
    """The zero-shot runs of `results` plus LAMBADA on the dense and the layer-pruned model: stories260K answers
    ARC-Easy and BoolQ at chance, but beats chance (0, a free answer) on LAMBADA: 6 of its first 640 documents
    (4 of the first 400 would sit on the 2-SE line)."""
    from pruning.evaluation.zeroshot import zeroshot

    root = tmp_path_factory.mktemp("informative") / "results"
    shutil.copytree(results / "results" / "metrics", root / "metrics")
    from pruning.evaluation.speed import speed

    for (entry, token), model in ((("dense", "base"), REPO.parent / "shared/models/stories260K"),
                                  (("layers", "f0.40"), results / "results/models" / MODEL / "layers/f0.40")):
        folder = root / "metrics" / MODEL / entry / token
        zeroshot(str(model), "lambada_openai", limit=640, batch_size=64, device="cpu", data_dir_path=str(DATA_DIR),
                 quiet=True,
                 output=str(folder / "zeroshot-lambada_openai.json"))
        speed(str(model), prompt_tokens=8, new_tokens=4, repeats=3, warmup=0, device="cpu", threads=1,
              output=str(folder / "speed.json"))
    return root


@pytest.mark.slow
def test_average_over_the_tasks_that_separate_the_model_from_chance(informative):
    """The mechanism for any task: LAMBADA is informative for stories260K, ARC-Easy and BoolQ are not; the
    Average and the accuracy loss cover the informative task only, with the paired SE over its documents."""
    tasks = (*TASKS, "lambada_openai")
    dense = {t: measured_file(informative, "dense", "base", f"zeroshot-{t}.json") for t in tasks}
    flags = {t: at_chance(mean_se(accuracy(dense[t])[0]), accuracy(dense[t])[1]) for t in tasks}
    assert flags["lambada_openai"] is False and accuracy(dense["lambada_openai"])[1] == 0.0
    kept = [t for t in tasks if not flags[t]]
    tables = by_name(collect(informative))
    header, *rows = cells(tables["zeroshot"].markdown())
    assert header == ["model", "method", "ratio", "arc_easy", "boolq", "lambada_openai", "Average"]
    for row, (entry, token) in zip(rows, ZEROSHOT_RUNS):
        average = informative_average(informative, entry, token, kept)
        assert average is not None
        expected = f"{100 * average[0]:.2f} ± {100 * average[1]:.1f}"
        if entry != "dense":
            difference = average[2]
            expected += f" (Δ {100 * difference.mean:+.1f} ± {100 * difference.se:.1f}" + (
                " ≈)" if indistinguishable(difference) else ")")
        assert row[-1] == expected
        assert (row[5].endswith("at chance")) is False
    for task in (t for t in tasks if flags[t]):
        assert {"arc_easy": "ARC-Easy", "boolq": "BoolQ"}[task] + " (dense " in tables["zeroshot"].caption
    (row,) = [r for r in cells(tables["comparison"].markdown())[1:] if r[2] == "layers"]
    change = informative_average(informative, "layers", "f0.40", kept)[2]  # pruned minus dense, as the document
    assert row[4] == f"{100 * change.mean:+.2f}% ± {100 * change.se:.2f}" + (" ≈" if indistinguishable(change) else "")


@pytest.mark.slow
def test_zeroshot_speed_plot_keys_points_by_a_legend(informative, tmp_path, monkeypatch):
    """The zero-shot/speed plot writes no label on its points (labels of close points overlap): a legend names
    each point; the pruned point has the paired 2-SE bar of its accuracy and the speed-up's range over repeats."""
    from pruning.reporting import plots
    from pruning.reporting.metric_files import Results

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    plots.plot_zeroshot_speed(Results(collect(informative)), tmp_path / "z.png")
    (axes,) = drawn.pop().axes
    assert list(axes.texts) == []
    assert axes.get_legend_handles_labels()[1] == [f"{MODEL} dense", f"{MODEL} layers 40% (layer/depth pruning)"]
    (point,) = axes.containers
    loss = informative_average(informative, "layers", "f0.40", ["lambada_openai"])[2]
    (vertical,) = [segment for segment in point.lines[2][1].get_segments()]
    assert vertical[1, 1] - vertical[0, 1] == pytest.approx(4 * 100 * loss.se)  # ± 2 paired SE, in points
    (horizontal,) = point.lines[2][0].get_segments()
    assert horizontal[1, 0] > horizontal[0, 0]  # the speed-up's range over the three repeats


def test_parameter_counts_in_prunegpt_units():
    """PruneGPT's #Param: one decimal in the count's unit (its Llama-3-8B reads 8.0, in billions)."""
    from pruning.reporting.tables.common import fmt_params

    assert [fmt_params(n) for n in (8_030_261_248, 134_515_008, 292_480, 950, None)] == \
        ["8.0B", "134.5M", "292.5K", "950", "—"]


# ---- the documents' rows: magnitude on its own, distillation, N:M (2:4), sparse checkpoints (issue 25) ----

DOCUMENT_RUNS = [  # added to `results`: (grid entry, ratio token, library method, arguments)
    ("magnitude", "s0.50", "magnitude", dict(sparsity=0.5, save_format="sparse-bitmask")),
    ("wanda", "nm2-4", "wanda", dict(nm="2:4", save_format="sparse-24-bitmask")),
    ("distill", "s0.50", "distill", dict(sparsity=0.5, base_method="magnitude", training_data="c4", max_steps=2,
                                         train_seqlen=32, train_batch_size=2, loss_windows=2)),
]


@pytest.fixture(scope="module")
def documents(results, tmp_path_factory, stories_dir):
    """The runs of `results` plus magnitude 50 % and Wanda 2:4 saved sparse, and a real (two-step) distillation."""
    root = tmp_path_factory.mktemp("documents")
    shutil.copytree(results / "results" / "metrics", root / "results" / "metrics")
    metrics = root / "results" / "metrics" / MODEL
    for entry, token, method, arguments in DOCUMENT_RUNS:
        out = root / "models" / entry / token
        pruning.prune(str(stories_dir), method, out, calib="c4", nsamples=4, seqlen=64, device="cpu",
                      data_dir_path=str(DATA_DIR), progress=False, **arguments)
        (metrics / entry / token).mkdir(parents=True)
        shutil.copy(out / "prune.json", metrics / entry / token / "prune.json")
        pruning.evaluate_perplexity(str(out), output=str(metrics / entry / token / "ppl.json"), **EVAL)
    return root / "results"


def test_comparison_table_skill_document_rows_signs_and_memory(documents):
    """The skill document's Performance Comparison: its headers, its rows in its order (Magnitude, Wanda,
    SparseGPT at 50 %, N:M (2:4), Structured), Memory as a change of the saved checkpoint's bytes against dense."""

    table = by_name(collect(documents))["comparison"]
    header, *rows = cells(table.markdown())
    assert header == ["model", "Method", "entry", "setting", "Accuracy Loss", "PPL change", "Speed",
                      "Speed (llama.cpp)", "Memory", "memory (bytes)", "memory (GGUF q4_k_m)", "Retraining Needed"]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("Magnitude", "magnitude", "50%"), ("Wanda", "wanda", "50%"), ("N:M (2:4)", "wanda", "2:4"),
        ("Structured", "depth-angular", "1 block"), ("Structured", "depth-cosine", "1 block"),
        ("Structured", "layers", "40%"), ("Structured", "two_stage", "20%"), ("distill", "distill", "50%")]
    metrics = documents / "metrics" / MODEL
    dense = read(metrics / "dense/base/ppl.json")
    dense_bytes = dense["parameters"]["total"] * 4  # float32 weights
    for row in rows:
        token = {"50%": "s0.50", "2:4": "nm2-4", "1 block": "L1", "40%": "f0.40", "20%": "r0.20"}[row[3]]
        report = read(metrics / row[2] / token / "prune.json")
        stored = report["checkpoint"]
        assert row[9] == f"{fmt_bytes(stored['safetensors_bytes'])} {stored['format']}"
        assert row[8] == f"{stored['safetensors_bytes'] / dense_bytes - 1:+.1%}"
        assert row[11] == ("Yes" if row[2] == "distill" else "No")
    memory = {r[1]: float(r[8].rstrip("%")) for r in rows}
    # zeros not stored: on the document's −50 % side (stories260K's embeddings, a large share, stay dense)
    assert memory["Magnitude"] < -30 and memory["N:M (2:4)"] < -30
    assert memory["distill"] > -1  # saved dense: a mask does not shrink the checkpoint
    assert "Accuracy Loss as the document signs it" in table.caption and "negative is a loss" in table.caption


def test_accuracy_change_has_the_documents_sign():
    """The skill document writes a loss as −2.5%: pruned minus dense, in points, negative for a loss."""
    from pruning.reporting.tables.comparison import _accuracy_change

    loss = pd.Series({"accuracy_loss": 2.5, "accuracy_loss_se": 0.4, "accuracy_indistinguishable": False})
    assert _accuracy_change(loss) == "-2.50% ± 0.40"
    gain = pd.Series({"accuracy_loss": -1.0, "accuracy_loss_se": None, "accuracy_indistinguishable": None},
                     dtype=object)  # as measures() keeps them: None where not measured
    assert _accuracy_change(gain) == "+1.00%"
    assert _accuracy_change(pd.Series({"accuracy_loss": None}, dtype=object)) == "—"


def test_impact_table_magnitude_and_distillation_rows_with_perslm_levels(documents):
    """PersLM's Performance Impact: magnitude pruning a family of its own, a Distillation row from a real
    distillation run, and the qualitative quality impact derived from the PPL change by the stated thresholds."""
    from pruning.reporting.tables.comparison import QUALITY_LEVELS, quality_level

    table = by_name(collect(documents))["impact"]
    header, *rows = cells(table.markdown())
    assert header == ["method family", "methods", "runs", "size reduction (non-zero params)",
                      "size reduction (dense bytes)", "speed improvement (decode, HF)", "quality impact (PPL)",
                      "quality impact", "quality impact (zero-shot points)"]
    families = {"layer/depth pruning": [("depth-angular", "L1"), ("depth-angular", "L2"), ("depth-cosine", "L1"),
                                        ("depth-cosine", "L2"), ("layers", "f0.40")],
                "magnitude pruning": [("magnitude", "s0.50")],
                "Wanda / SparseGPT": [("wanda", "nm2-4"), ("wanda", "s0.50")],
                "distillation": [("distill", "s0.50")], "two-stage": [("two_stage", "r0.20")]}
    assert [r[0] for r in rows] == list(families)
    metrics = documents / "metrics" / MODEL
    dense = read(metrics / "dense/base/ppl.json")
    distilled = read(metrics / "distill/s0.50/prune.json")
    assert distilled["result"]["distillation"]["steps"] == 2  # a real distillation ran
    for row in rows:
        ratios = sorted(read(metrics / e / t / "ppl.json")["ppl"] / dense["ppl"] for e, t in families[row[0]])
        low, high = quality_level(ratios[0]), quality_level(ratios[-1])
        assert row[7] == (low if low == high else f"{low} – {high}")
    bounds = [bound for bound, _ in QUALITY_LEVELS]
    assert [quality_level(1 + b - 1e-9) for b in bounds] + [quality_level(1 + bounds[-1])] == ["Low", "Medium", "High"]
    assert "Low below +25% PPL, Medium below +100% PPL, High from +100%" in table.caption


def test_perplexity_note_calls_a_run_a_smoke_run_by_windows_and_typical_error():
    """Fewer windows than the publication protocol, or a typical (median) paired standard error above 5 %, is a
    smoke run; one noisy row among precise ones (80 % sparsity) is not, and carries its own ±; without pairing the
    plain standard errors decide."""
    from pruning.reporting.uncertainty import PUBLICATION_PPL_WINDOWS, Figure, perplexity_note

    def figure(relative: float, paired: float | None = 0.01, windows: int = PUBLICATION_PPL_WINDOWS) -> Figure:
        spread = {} if paired is None else dict(vs_dense_ratio=2.0, vs_dense_ratio_low=2.0 * math.exp(-2 * paired),
                                                vs_dense_ratio_high=2.0 * math.exp(2 * paired))
        return Figure(100.0, n_items=windows, se=100.0 * relative, **spread)

    note = perplexity_note([figure(0.03), figure(0.06), figure(0.08, paired=0.07)])
    assert note == ("Uncertainty: the standard error of a perplexity is 3.0%–8.0% of it over 64 windows, of its "
                    "paired ratio to dense 1.0%–7.0%.")
    assert perplexity_note([figure(0.03, windows=PUBLICATION_PPL_WINDOWS - 1)]).startswith("Smoke run, large")
    assert perplexity_note([figure(0.03, paired=0.06), figure(0.03, paired=0.06), figure(0.03)]).startswith("Smoke")
    assert perplexity_note([figure(0.06, None), figure(0.07, None), figure(0.04, None)]).startswith("Smoke run")
    assert perplexity_note([figure(0.03, None), figure(0.04, None)]).startswith("Uncertainty")
