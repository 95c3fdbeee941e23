"""The one-home tables of names: working dtypes (pruning/core/dtypes.py) and GGUF output types
(pruning/export/outtypes.py), checked against what torch, safetensors, gguf and llama.cpp call them, and the
copies the workflow schema and the CLI hold."""
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from gguf import GGMLQuantizationType, LlamaFileType
from safetensors.torch import save_file

from pruning.cli import build_parser
from pruning.core import dtypes
from pruning.export import outtypes
from pruning.preflight import workflow_schema
from pruning.reporting import evaluations

SCHEMA = workflow_schema(yaml.safe_load((Path(__file__).resolve().parent.parent / "workflow" / "schemas" /
                                         "config.schema.yaml").read_text()))


@pytest.mark.parametrize("name", dtypes.DTYPE_NAMES)
def test_each_working_dtype_matches_torch_and_safetensors(name, tmp_path):
    dtype = dtypes.torch_dtype(name)
    assert dtypes.dtype_bytes(name) == torch.finfo(dtype).bits // 8
    save_file({"w": torch.zeros(2, 3, dtype=dtype)}, tmp_path / "w.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "w.safetensors", framework="pt") as handle:
        assert str(handle.get_slice("w").get_dtype()) == dtypes.safetensors_name(name)


def test_unknown_dtype_is_refused_by_name():
    with pytest.raises(dtypes.DtypeError, match="float8.*float32, bfloat16, float16"):
        dtypes.dtype_bytes("float8")
    assert set(dtypes.DTYPE_ALIASES.values()) <= set(dtypes.DTYPE_NAMES)


def _subcommands():
    return build_parser()._subparsers._group_actions[0].choices


def test_schema_and_cli_take_the_dtype_table():
    assert SCHEMA["properties"]["dtype"]["enum"] == list(dtypes.DTYPE_NAMES)
    assert SCHEMA["properties"]["dtype"]["default"] == dtypes.DEFAULT_DTYPE
    options = {name: action for name, sub in _subcommands().items() for action in sub._actions
               if "--dtype" in action.option_strings}
    assert {"prune", "eval", "zeroshot", "speed", "memory"} <= set(options)
    for name, action in options.items():
        assert tuple(action.choices) == dtypes.DTYPE_NAMES and action.default == dtypes.DEFAULT_DTYPE, name


def test_each_outtype_is_classified_once_with_types_gguf_knows():
    assert set(outtypes.DIRECT_OUTTYPES).isdisjoint(outtypes.LLAMACPP_OUTTYPES)
    assert outtypes.DIRECT_OUTTYPES + outtypes.LLAMACPP_OUTTYPES == outtypes.OUTTYPES
    assert set(outtypes.INTERMEDIATE_OUTTYPES) <= set(outtypes.DIRECT_OUTTYPES)
    for name, entry in outtypes.OUTPUT_TYPES.items():
        assert entry.name == name
        GGMLQuantizationType[entry.main_type], LlamaFileType[entry.file_type]  # KeyError when gguf lacks it


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
def test_llama_cpp_has_the_file_type_of_each_quantized_outtype():
    import llama_cpp

    for name in outtypes.LLAMACPP_OUTTYPES:
        assert isinstance(getattr(llama_cpp, outtypes.OUTPUT_TYPES[name].llama_cpp_ftype), int)


def test_schema_and_cli_take_the_outtype_table():
    assert SCHEMA["properties"]["gguf"]["properties"]["outtypes"]["items"]["enum"] == list(outtypes.OUTTYPES)
    convert = _subcommands()["convert"]
    assert all(name in convert.description for name in outtypes.OUTTYPES)


# ---- metric-file names (pruning/reporting/evaluations.py) --------------------------------------------------

CONFIG = {"zeroshot": {"models": ["a"], "tasks": ["boolq", "arc_easy"]}, "gguf": {"models": None, "outtypes": ["q4_k_m"]},
          "speed": {"models": None, "enabled": False}}


def test_every_metric_file_name_built_is_parsed_back_to_its_evaluation_and_key():
    for source, evaluation in evaluations.EVALUATIONS.items():
        keys = ["arc_easy", "q4-k-m", "x.json"] if evaluation.key else [""]
        for key in keys:
            assert evaluations.parse_metric_file(evaluation.file_name(key)) == (source, key)
    assert evaluations.parse_metric_file("zeroshot.json") is None  # a keyed file needs its key
    assert evaluations.parse_metric_file("ppl-x.json") is None
    assert evaluations.parse_metric_file("notes.json") is None
    with pytest.raises(ValueError, match="zeroshot-{task}.json"):
        evaluations.EVALUATIONS["zeroshot"].file_name()


def test_metric_files_of_a_row_follow_the_config_sections():
    names = evaluations.metric_file_names
    assert names(CONFIG, "a", pruned=True) == ["ppl.json", "prune.json", "zeroshot-boolq.json",
                                               "zeroshot-arc_easy.json", "gguf-q4_k_m.json"]
    assert names(CONFIG, "b", pruned=False) == ["ppl.json", "gguf-q4_k_m.json"]
    speed_on = {**CONFIG, "speed": {"models": ["b"], "enabled": True}}
    assert names(speed_on, "b", pruned=False)[-1] == "speed.json" and "speed.json" not in names(speed_on, "a", True)
    # a ppl_only entry's rows: perplexity (and prune.json) only, whatever the stages ask (PruneGPT's block counts)
    ppl_only = {**speed_on, "methods": {"angular": {"method": "depth", "ppl_only": True}, "wanda": {"method": "wanda"}}}
    assert names(ppl_only, "b", True, "angular") == ["ppl.json", "prune.json"]
    assert names(ppl_only, "b", True, "wanda") == ["ppl.json", "prune.json", "gguf-q4_k_m.json", "speed.json"]
    assert names(ppl_only, "b", False, "dense") == ["ppl.json", "gguf-q4_k_m.json", "speed.json"]
    # a list: only the rows at those ratio values (the publication run's frontier-only sparsities)
    curve = {**speed_on, "methods": {"wanda": {"method": "wanda", "ppl_only": [0.3, "2:4"]}}}
    assert names(curve, "b", True, "wanda", 0.3) == names(curve, "b", True, "wanda", "2:4") == ["ppl.json", "prune.json"]
    assert names(curve, "b", True, "wanda", 0.5) == ["ppl.json", "prune.json", "gguf-q4_k_m.json", "speed.json"]


def test_collected_rows_carry_the_source_and_key_of_their_file_name(tmp_path):
    from pruning.reporting.metric_files import read_metrics

    folder = tmp_path / "m" / "dense" / "base"
    folder.mkdir(parents=True)
    names = evaluations.metric_file_names({**CONFIG, "speed": {"models": None, "enabled": True}}, "a", pruned=False)
    for name in names:
        (folder / name).write_text('{"value": 1}')
    frame = read_metrics([folder / name for name in names], tmp_path)
    assert list(zip(frame.source, frame.key)) == [evaluations.parse_metric_file(name) for name in names]


def test_the_cli_has_every_command_an_evaluation_names():
    from pruning.cli import COMMANDS

    for command in evaluations.evaluation_commands():
        assert command in COMMANDS and importlib.util.find_spec(f"pruning.commands.{command}"), command
