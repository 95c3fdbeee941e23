"""The four recipes of docs/architecture.md followed once each, on real models: a method, a model family, a table
and an evaluation are added exactly as the page says (the registration a new module would do at import is done
here, and undone after the test), and each reaches every place the page promises without any other edit."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

import pruning
from conftest import DATA_DIR, REPO, TINY_VOCAB, tiny_config
from pruning.core import adapters
from pruning.evaluation.provenance import Measurement
from pruning.methods import base
from pruning.methods.base import PruneContext, register
from pruning.methods.catalog import config_schema
from pruning.methods.mask_base import MaskingMethod
from pruning.reporting import evaluations, grid
from pruning.reporting.evaluations import EVALUATIONS, Evaluation, metric_file_names, parse_metric_file
from pruning.reporting.metric_files import Results, collect
from pruning.reporting.tables import LAYOUTS, write_tables
from pruning.reporting.tables.common import Table

CALIBRATION = dict(calib="c4", nsamples=2, seqlen=32, device="cpu", data_dir_path=str(DATA_DIR), progress=False)
EVAL = dict(seqlen=32, max_windows=2, device="cpu", data_dir_path=str(DATA_DIR))


# ------------------------------------------------------------------------------------------- a method

class RowExtremes(MaskingMethod):
    """The recipe's step 1: a MaskingMethod with its name, description, facts (inherited from MaskingMethod:
    family, no retraining, no layer removal, MoE supported) and prune(ctx); it zeroes the weights nearest the
    middle of each row's range, an arbitrary score chosen to differ from magnitude's."""

    name = "row_extremes"
    description = "keeps the weights farthest from their row's mean"

    def prune(self, ctx: PruneContext) -> dict:
        from pruning.core.adapters import weight_matrix
        from pruning.methods.sparsify import select_mask

        per_layer = {}
        for index, targets in self.targets(ctx).items():
            for module in targets.values():
                weight = weight_matrix(module)
                scores = (weight - weight.mean(dim=1, keepdim=True)).abs()
                self.apply_mask(module, select_mask(scores, self.target, "row"))
            per_layer[index] = self.layer_report(targets)
        return self.summary(per_layer)


@pytest.fixture
def method_registry(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register(RowExtremes)  # the recipe's step 2: what importing the module in pruning/methods/__init__.py does


def test_recipe_add_a_method(method_registry, stories_dir, tmp_path):
    """Registered, the method is built by name, validated by the generated config schema and pruned by the API."""
    assert "row_extremes" in pruning.available_methods()
    schema = config_schema({"$defs": {"method": {"properties": {"method": {}}}}})
    assert "row_extremes" in schema["$defs"]["method"]["properties"]["method"]["enum"]
    report = pruning.prune(str(stories_dir), "row_extremes", tmp_path / "out", sparsity=0.5, **CALIBRATION)
    assert report["method"] == "row_extremes" and report["result"]["total_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((tmp_path / "out" / "prune.json").read_text())["method"] == "row_extremes"


# ------------------------------------------------------------------------------------------- a model family

def test_recipe_add_a_model_family(stories_dir, tmp_path):
    """A model type transformers knows but no adapter does is refused with the supported list; once its adapter
    is known (the recipe's step 1), the layer-wise methods and layer removal run on it."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, PretrainedConfig

    class RecipeConfig(PretrainedConfig):  # a family of its own: no known config class among its bases
        model_type = "recipe_llama"

    class RecipeForCausalLM(LlamaForCausalLM):
        config_class = RecipeConfig

    AutoConfig.register("recipe_llama", RecipeConfig, exist_ok=True)
    AutoModelForCausalLM.register(RecipeConfig, RecipeForCausalLM, exist_ok=True)
    torch.manual_seed(0)
    config = RecipeConfig(**{**tiny_config("llama").to_dict(), "model_type": "recipe_llama", "vocab_size": TINY_VOCAB,
                             "num_hidden_layers": 4})
    RecipeForCausalLM(config).save_pretrained(tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        if (stories_dir / name).exists():
            (tmp_path / "model" / name).write_bytes((stories_dir / name).read_bytes())

    with pytest.raises(adapters.UnsupportedArchitecture, match="'recipe_llama'; supported model types: .*llama"):
        pruning.prune(str(tmp_path / "model"), "wanda", tmp_path / "refused", sparsity=0.5, **CALIBRATION)
    assert not (tmp_path / "refused").exists()

    family = replace(adapters.adapter_for_model_type("llama"), family="recipe", model_types=("recipe_llama",),
                     sliceable_model_types=("recipe_llama",))
    with adapters.adapter_added(family):
        wanda = pruning.prune(str(tmp_path / "model"), "wanda", tmp_path / "wanda", sparsity=0.5, **CALIBRATION)
        pruning.prune(str(tmp_path / "model"), "layers", tmp_path / "layers", fraction=0.5, **CALIBRATION)
    assert wanda["result"]["total_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((tmp_path / "layers" / "config.json").read_text())["num_hidden_layers"] == 2


# ------------------------------------------------------------------------------------------- a table and an evaluation

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, stories_dir):
    """results/metrics of a dense and a magnitude-pruned stories260K, laid out as the workflow writes them."""
    root = tmp_path_factory.mktemp("recipes")
    metrics = root / "results" / "metrics" / "stories260K"
    pruned = root / "results" / "models" / "stories260K" / "magnitude" / "s0.50"
    pruning.evaluate_perplexity(str(stories_dir), output=str(metrics / "dense" / "base" / "ppl.json"), **EVAL)
    pruning.prune(str(stories_dir), "magnitude", pruned, sparsity=0.5, device="cpu", progress=False)
    (metrics / "magnitude" / "s0.50").mkdir(parents=True)
    (metrics / "magnitude" / "s0.50" / "prune.json").write_bytes((pruned / "prune.json").read_bytes())
    pruning.evaluate_perplexity(str(pruned), output=str(metrics / "magnitude" / "s0.50" / "ppl.json"), **EVAL)
    return root, {"dense": stories_dir, "magnitude": pruned}


def scored_tokens_table(results: Results, notes=None) -> Table:
    """The recipe's table layout: scored tokens per run, filtered from the long frame and pivoted."""
    ids = results.ids()
    rows, wide = results.wide(ids, ppl=["scored_tokens"])
    display = [{"method": results.runs.method[r], "scored tokens": int(wide.loc[r, ("ppl", "scored_tokens")])}
               for r in ids]
    import pandas as pd

    return Table("scored-tokens", "Scored tokens per run", "Tokens whose NLL entered the perplexity.",
                 pd.DataFrame(display), rows)


def test_recipe_add_a_table(two_runs, tmp_path, monkeypatch):
    """A layout in LAYOUTS and its TableSpec in grid.table_specs: write_tables writes it with the others."""
    import pruning.reporting.tables as tables

    root, _ = two_runs
    monkeypatch.setitem(LAYOUTS, "scored_tokens", scored_tokens_table)
    specs = grid.table_specs
    monkeypatch.setattr(tables, "table_specs",
                        lambda rows, measured=(): [*specs(rows, measured), grid.TableSpec("scored-tokens", "scored_tokens")])
    written = {path.name for path in write_tables(collect(root / "results"), tmp_path / "tables")}
    assert {"scored-tokens.md", "scored-tokens.csv", "summary.md"} <= written
    text = (tmp_path / "tables" / "scored-tokens.md").read_text()
    assert "| magnitude " in text and "| dense " in text


def test_recipe_add_an_evaluation(two_runs, monkeypatch):
    """An entry in EVALUATIONS names its metric file both ways, puts it on every grid row the config asks for,
    and its table appears where a run has the file; the measurement itself records through Measurement."""
    root, models = two_runs
    entry = Evaluation("params", "params", ("params",), tables=(("params", "params"),))
    monkeypatch.setitem(EVALUATIONS, "params", entry)
    assert evaluations.parse_metric_file("params.json") == ("params", "")
    default_config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert "params.json" in metric_file_names(default_config, "stories260K", pruned=True)

    folder = root / "results" / "metrics" / "stories260K"
    for method, where in (("dense", "dense/base"), ("magnitude", "magnitude/s0.50")):
        measurement = Measurement(str(models[method]))
        path = measurement.resolve()
        model, _ = pruning.load_model(str(path))
        nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
        output = folder / where / "params.json"
        measurement.finish({"nonzero_parameters": nonzero}, output)
    long = collect(root / "results")
    results = Results(long)
    assert results.has("params").all()
    values = long[(long.source == "params") & (long.metric == "nonzero_parameters")].set_index("method").value
    assert values["magnitude"] < values["dense"]
    assert grid.TableSpec("params", "params") in grid.table_specs(results.grid_rows(), ["params"])
    assert parse_metric_file("params-x.json") is None
