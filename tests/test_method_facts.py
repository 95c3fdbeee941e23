"""What a method is (its family, whether it retrains, removes layers, prunes mixture-of-experts models, runs other
methods) is declared once, on the method class; the grid, the tables, the MoE refusal and distillation's
base-method check read those declarations, so a new method needs no list edited anywhere else."""
import ast
from pathlib import Path

import pytest

from pruning.core.adapters import UnsupportedArchitecture
from pruning.methods import MethodError, available_methods, base, build_method, method_class
from pruning.methods.base import FACTS, FAMILIES, PruningMethod, register
from pruning.methods.depth import Depth, QuantizedScoring
from pruning.reporting.grid import table_specs

PACKAGE = Path(__file__).resolve().parent.parent / "pruning"
FACT_TYPES = {"FAMILY": str, "RETRAINS": bool, "REMOVES_LAYERS": bool, "SUPPORTS_MOE": bool, "COMPOSITE": bool}
MIXTRAL = {"model_type": "mixtral", "num_hidden_layers": 8}  # enough layers for every plan to fit


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test: toy methods registered in it do not outlive the test."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def toy(name="toy", **facts) -> type[PruningMethod]:
    declared = {"FAMILY": "layer/depth pruning", "RETRAINS": False, "REMOVES_LAYERS": False, "SUPPORTS_MOE": True,
                "COMPOSITE": False, **facts}
    return type("Toy", (PruningMethod,), {"name": name, **declared})


@pytest.mark.parametrize("name", available_methods())
def test_every_method_declares_every_fact(name):
    cls = method_class(name)
    assert set(FACTS) == set(FACT_TYPES)
    for fact, kind in FACT_TYPES.items():
        assert isinstance(getattr(cls, fact), kind), (name, fact)
    assert cls.FAMILY in FAMILIES


def test_every_family_has_a_method_and_the_published_order():
    assert list(base.method_families()) == list(FAMILIES)
    assert base.method_families()["layer/depth pruning"] == ["depth", "layers"]
    # PersLM lists magnitude pruning on its own: its family holds magnitude and gradual magnitude only
    assert base.method_families()["magnitude pruning"] == ["gradual", "magnitude"]
    assert base.method_families()["Wanda / SparseGPT"] == ["alps", "dsnot", "iterative", "sparsegpt", "wanda"]
    assert base.layer_removal_methods() == ["depth", "layers", "two_stage"]
    assert base.retraining_methods() == ["distill", "gradual", "iterative"]


def test_register_refuses_a_method_without_its_facts(registry):
    incomplete = toy()
    del incomplete.SUPPORTS_MOE
    with pytest.raises(RuntimeError, match="'toy' does not declare SUPPORTS_MOE"):
        register(incomplete)
    with pytest.raises(RuntimeError, match="FAMILY 'pruning' is not one of head pruning"):
        register(toy(FAMILY="pruning"))
    assert "toy" not in available_methods()


def test_grid_and_tables_read_the_facts_of_a_new_method(registry):
    row = {"model": "m", "method": "entry", "ratio": "L1", "library_method": "toy"}
    dense = {"model": "m", "method": "dense", "ratio": "base", "library_method": "dense"}
    register(toy(REMOVES_LAYERS=True, RETRAINS=True, FAMILY="two-stage"))
    specs = {spec.name for spec in table_specs([dense, row])}
    assert {"layer-removal", "impact"} <= specs
    assert "toy" in base.layer_removal_methods() and "toy" in base.retraining_methods()
    assert base.method_families()["two-stage"] == ["toy", "two_stage"]


def test_no_layer_removal_table_without_a_method_that_declares_it(registry):
    register(toy(name="toy2"))
    row = {"model": "m", "method": "entry", "ratio": "L1", "library_method": "toy2"}
    assert "layer-removal" not in {spec.name for spec in table_specs([row])}


def test_moe_refusal_reads_supports_moe_and_lists_the_methods_that_do(registry):
    register(toy(name="dense_only", SUPPORTS_MOE=False))
    register(toy(name="expert_ready"))
    with pytest.raises(UnsupportedArchitecture, match=r"dense_only cannot prune mixture-of-experts model type "
                                                      r"'mixtral'.*on MoE models use alps, depth, dsnot, expert_ready, "
                                                      r"gradual, layers, magnitude, sparsegpt or wanda$"):
        method_class("dense_only")().check_config(MIXTRAL)
    method_class("dense_only")().check_config({"model_type": "llama"})
    method_class("expert_ready")().check_config(MIXTRAL)


@pytest.mark.parametrize("name,arguments,refused", [
    ("heads", {"fraction": 0.25}, "heads"), ("flap", {"fraction": 0.2}, "flap"),
    ("two_stage", {"prune_rate": 0.2}, "two_stage"),
    ("all", {"head_fraction": 0.25, "sparsity": 0.5}, "heads"),  # a composite: the stage that cannot
    ("distill", {"base_method": "flap", "fraction": 0.2, "training_data": "c4"}, "flap"),
])
def test_moe_refusal_names_the_method_or_stage_that_cannot(name, arguments, refused):
    with pytest.raises(UnsupportedArchitecture, match=f"^{refused} cannot prune mixture-of-experts"):
        build_method(name, **arguments).check_config(MIXTRAL)


@pytest.mark.parametrize("name,arguments", [
    ("depth", {"num_blocks": 1}), ("wanda", {"sparsity": 0.5}),
    ("all", {"head_fraction": 0, "layer_fraction": 0.25, "sparsity": 0.5}),  # heads (default 0.1) left out
    ("distill", {"base_method": "layers", "fraction": 0.25, "training_data": "c4"}),
])
def test_methods_that_support_moe_pass_its_config(name, arguments):
    build_method(name, **arguments).check_config(MIXTRAL)


@pytest.mark.parametrize("composite", ["all", "distill", "iterative"])
def test_distill_base_method_is_any_method_that_runs_no_other(composite):
    assert method_class(composite).COMPOSITE
    with pytest.raises(MethodError, match=f"cannot be '{composite}', which runs other methods.*base methods: alps, depth, "
                                          f"dsnot, flap, gradual, heads, layers, magnitude, sparsegpt, two_stage, wanda"):
        build_method("distill", base_method=composite, sparsity=0.5, training_data="c4")


def test_quantized_scoring_is_depth_with_its_options_and_facts():
    scoring = QuantizedScoring.build({"load_in_4bit": True}, num_blocks=2, criterion="cosine")
    assert isinstance(scoring, Depth) and scoring.name == "depth" and "depth" in available_methods()
    assert scoring.options() == build_method("depth", num_blocks=2, criterion="cosine").options()
    assert all(getattr(scoring, fact) == getattr(Depth, fact) for fact in FACTS)
    assert "quantized copy" in scoring.streaming_refusal()
    with pytest.raises(MethodError, match="num_blocks"):
        QuantizedScoring.build({"load_in_4bit": True}, num_blocks=0)


def _method_name_lists(path: Path, names: set[str]):
    """(line, names) of every tuple, list, set or dict value literal naming two or more methods (not an unpacking
    assignment of single names)."""
    tree = ast.parse(path.read_text())
    unpacked = {id(node.value) for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in unpacked:
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if len(named) > 1:
                yield node.lineno, named


def test_no_list_of_methods_outside_the_methods():
    names = set(available_methods())
    found = {f"{path.relative_to(PACKAGE)}:{line}": named for path in PACKAGE.rglob("*.py")
             if "methods" not in path.relative_to(PACKAGE).parts for line, named in _method_name_lists(path, names)}
    assert not found, "declare it as a fact on the methods (pruning/methods/base.py FACTS)"
