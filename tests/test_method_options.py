"""Method options come from one declaration per method: validation without a model (and without torch),
the prune.json record, the CLI listing and the workflow schema's method rules all agree with it; and what
needs the model (ignore globs, N:M width, batch size) is refused before any calibration or evaluation."""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pruning
import pruning.api
from pruning.reporting import grid
from pruning.cli import main as cli_main
from pruning.methods import MethodError, available_methods, build_method, method_class
from pruning.methods.catalog import config_schema, is_composite, ratio_kinds, schema_rules

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

# The least each method needs; every other option keeps its default.
MINIMAL = {
    "magnitude": {"sparsity": 0.5}, "wanda": {"sparsity": 0.5}, "sparsegpt": {"nm": "2:4"}, "dsnot": {"sparsity": 0.5},
    "alps": {"sparsity": 0.5},
    "heads": {"fraction": 0.25}, "layers": {"fraction": 0.25}, "depth": {"num_blocks": 1},
    "two_stage": {"prune_rate": 0.2}, "all": {"sparsity": 0.5}, "flap": {"fraction": 0.2},
    "distill": {"base_method": "layers", "fraction": 0.25, "training_data": "c4"},
    "gradual": {"sparsity": 0.5}, "iterative": {"base_method": "wanda", "sparsity": 0.5},
}


def bad_value(option):
    """A value the declaration refuses: wrong choice, wrong type, or out of range."""
    if option.choices:
        return "banana"
    if option.type is bool:
        return "yes"
    if option.type is list:
        return "0,1"
    if option.type is str:
        return 5
    if option.low is not None:
        return option.low - 1
    return "many"


def test_every_method_is_covered_here():
    assert sorted(MINIMAL) == available_methods()


def test_schema_method_rules_are_the_registry_s():
    """The schema file leaves the method names and per-method rules out; the workflow fills them from the
    registry (config_schema), and every ratio kind of the registry has its list in the schema."""
    assert "allOf" not in SCHEMA["$defs"]["method"] and "enum" not in SCHEMA["$defs"]["method"]["properties"]["method"]
    method = config_schema(copy.deepcopy(SCHEMA))["$defs"]["method"]
    assert method["properties"]["method"]["enum"] == available_methods()
    assert method["allOf"] == schema_rules()
    kinds = {kind for name in available_methods() for kind in ratio_kinds(name)}
    assert kinds == set(SCHEMA["$defs"]["ratio_lists"]["properties"]) == set(grid.RATIO_TOKENS)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_minimal_arguments_pass_and_record_every_option(name):
    record = build_method(name, **MINIMAL[name]).options()
    json.dumps(record)  # what prune.json stores
    if not is_composite(name):
        declared = {o.name for o in method_class(name).OPTIONS}
        recorded = set(record) | ({"sparsity", "nm"} if "target" in record else set())
        assert recorded - {"target"} <= declared


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_unknown_option_is_refused_naming_it_and_the_valid_ones(name):
    with pytest.raises(MethodError) as error:
        build_method(name, **MINIMAL[name], bogus=1)
    message = str(error.value)
    assert "\n" not in message and message.startswith(name) and "bogus" in message
    for option in method_class(name).OPTIONS:
        assert option.name in message


@pytest.mark.parametrize("name,option", [(name, option) for name in sorted(MINIMAL)
                                         for option in method_class(name).OPTIONS])
def test_every_declared_option_refuses_a_bad_value_naming_what_is_allowed(name, option):
    arguments = {**MINIMAL[name], option.name: bad_value(option)}
    with pytest.raises(MethodError) as error:
        build_method(name, **arguments)
    message = str(error.value)
    assert "\n" not in message and option.name in message
    if option.check is None:
        assert option.allowed() in message


def test_per_banana_and_other_known_bad_options():
    with pytest.raises(MethodError, match=r"^magnitude: per must be one of matrix, row, got 'banana'$"):
        build_method("magnitude", sparsity=0.5, per="banana")
    with pytest.raises(MethodError, match=r"^sparsegpt: block_size must be an integer >= 1, got 0$"):
        build_method("sparsegpt", sparsity=0.5, block_size=0)
    with pytest.raises(MethodError, match=r"^distill: unknown option per; valid options: base_method, .*fraction$"):
        build_method("distill", base_method="layers", fraction=0.2, training_data="c4", per="row")


def test_records_keep_their_published_layout():
    assert build_method("sparsegpt", nm="2:4").options() == {
        "target": {"kind": "nm", "n": 2, "m": 4, "convention": "N kept out of every M"},
        "one_pass": False, "block_size": 128, "damp_fraction": 0.01}
    assert build_method("depth", num_blocks=2, criterion="perplexity").options() == {
        "num_blocks": 2, "criterion": "perplexity", "skip_blocks": []}
    assert list(build_method("depth", num_blocks=2).options()) == ["num_blocks", "criterion", "skip_blocks", "tokens",
                                                            "block_size"]
    assert build_method("magnitude", sparsity=0.5, per=None).options()["per"] == "matrix"  # YAML null: the default
    assert build_method("distill", **MINIMAL["distill"], max_steps=None).options()["max_steps"] is None  # nullable: no cap
    assert build_method("two_stage", ffn_layers=2).options() == {"ffn_layers": 2, "attention_layers": 0}
    assert build_method("all", head_fraction=0, layer_fraction=0.2, nm="2:4", sparsity_method="magnitude").options() == {
        "stages": [{"method": "layers", "fraction": 0.2},
                   {"method": "magnitude", "target": {"kind": "nm", "n": 2, "m": 4, "convention": "N kept out of every M"},
                    "per": "matrix"}]}


def test_building_methods_imports_no_torch():
    """The workflow checks every grid entry with build_method; that must not cost a torch import."""
    code = (
        "import sys\n"
        "from pruning.methods import build_method\n"
        "for name in ('magnitude', 'wanda', 'sparsegpt', 'heads', 'layers', 'depth', 'two_stage', 'all'):\n"
        "    build_method(name, **{'heads': {'fraction': 0.2}, 'layers': {'fraction': 0.2}, "
        "'depth': {'num_blocks': 1}, 'two_stage': {'prune_rate': 0.2}}.get(name, {'sparsity': 0.5})).options()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('pruning'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_methods_command_lists_every_option(capsys):
    assert cli_main(["methods"]) == 0
    listing = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name}: " in f"\n{listing}"
        for option in method_class(name).OPTIONS:
            assert f"  {option.name} ({option.allowed()}" in listing
    with pytest.raises(SystemExit):
        cli_main(["prune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("magnitude: sparsity, nm, allocation, owl_m, owl_lambda, schedule, ramp, search_step, search_levels, "
            "search_generations, search_offspring, search_windows, reconstruct, reconstruct_steps, reconstruct_lr, "
            "per;") in help_text
    assert "python -m pruning methods" in help_text


# ------------------------------------------------------------------ checks that need the model, before work


@pytest.mark.parametrize("method,argv,message", [
    ("wanda", ["--sparsity", "0.5", "--ignore", "*"], "leave no linear module to prune"),
    ("magnitude", ["--sparsity", "0.5", "--ignore", "*proj"], "leave no linear module to prune"),
    ("sparsegpt", ["--nm", "2:128"], "M <= the input width .*q_proj has 64"),
    ("wanda", ["--nm", "2:128", "--ignore", "*_proj", "--ignore", "*.up_proj"], "leave no linear"),
    ("all", ["--layer-reduction", "0.2", "--nm", "2:128"], "q_proj has 64"),
])
def test_model_dependent_refusals_come_before_calibration(stories_dir, tmp_path, capsys, no_work, method, argv,
                                                          message):
    out = tmp_path / "out"
    code = cli_main(["prune", "--model", str(stories_dir), "--method", method, *argv, "--output-dir", str(out),
                     "--evaluate", "--quiet", "--device", "cpu", "--nsamples", "2", "--seqlen", "16"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar (issue 10, --quiet)
    assert code == 2 and error.startswith("error: ") and re.search(message, error), error
    assert not out.exists()


def test_nm_that_fits_every_targeted_width_is_accepted(stories_dir, tmp_path, capsys):
    """M = 64 fits q/k/v/o/gate/up (64 wide) and down (172 wide, a trailing partial group)."""
    out = tmp_path / "out"
    assert cli_main(["prune", "--model", str(stories_dir), "--method", "magnitude", "--nm", "2:64",
                     "--output-dir", str(out), "--quiet", "--device", "cpu"]) == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["options"] == build_method("magnitude", nm="2:64").options()


@pytest.mark.parametrize("command", [
    ["prune", "--method", "magnitude", "--sparsity", "0.5", "--output-dir", "OUT"],
    ["eval", "--ppl", "--seqlen", "16", "--output", "OUT"],
])
def test_batch_size_zero_is_refused_before_loading(stories_dir, tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in command]
    with pytest.raises(SystemExit) as exit_:
        cli_main([argv[0], "--model", str(stories_dir), *argv[1:], "--batch-size", "0", "--device", "cpu"])
    assert exit_.value.code == 2
    assert "--batch-size: must be a whole number >= 1, got '0'" in capsys.readouterr().err
    assert not out.exists()


def test_library_refuses_batch_size_zero_before_work(stories_dir, tmp_path, no_work):
    with pytest.raises(ValueError, match="^batch_size must be a whole number >= 1, got 0$"):
        pruning.prune(str(stories_dir), "wanda", tmp_path / "out", sparsity=0.5, batch_size=0, device="cpu",
                      progress=False, evaluate=True)
    assert not (tmp_path / "out").exists()
