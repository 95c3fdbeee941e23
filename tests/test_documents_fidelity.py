"""The documents' commands, configs and examples as their users wrote them (issue 25), each run on stories260K
or a tiny model built here and checked against what the document says it does: PersLM's `all` with its
defaults, its GGUF `convert --quantization`, its `ModelPruner` example; PruneGPT's and Quark's selection on
the test split; PP-LLMs' command line and its `mha_ffn_ratio` default; remote-code models (deepseek-moe in
Quark's table) behind an explicit opt-in."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pruning
from conftest import DATA_DIR
from pruning.cli import main as cli_main

QUICK = ["--quiet", "--device", "cpu"]


def report_of(path) -> dict:
    return json.loads((Path(path) / "prune.json").read_text())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------ 3. PersLM's ModelPruner example

# "Custom Pruning Workflows" in PersLM's pruning document, as written; only the import (the module is
# `pruning` here, as `python -m deployment.optimize_inference` is `python -m pruning`), the model path and the
# output directory are substituted.
PERSLM_EXAMPLE = '''
from deployment.optimize_inference import ModelPruner

pruner = ModelPruner(model_path="your/model/path", output_dir="output")

# Apply custom pruning workflow
pruner.prune_heads(head_reduction=0.15, save_model=False)
pruner.prune_layers(layer_reduction=0.2, save_model=False)

# Evaluate intermediate result
metrics1 = pruner.evaluate_pruned_model()
print(f"After structural pruning: {metrics1}")

# Continue with magnitude pruning
pruner.magnitude_pruning(sparsity=0.3, save_model=True)

# Final evaluation
metrics2 = pruner.evaluate_pruned_model()
print(f"Final model: {metrics2}")
'''


def test_model_pruner_is_the_pruner():
    assert pruning.ModelPruner is pruning.Pruner
    assert "ModelPruner" in pruning.__all__


@pytest.fixture
def long_context_stories(stories_dir, tmp_path):
    """stories260K's files with max_position_embeddings 2048 in config.json: the example evaluates with the
    default 2048-token windows, which stories260K's declared 512 positions refuse (its RoPE weights take any
    position; only the declared limit changes)."""
    model = tmp_path / "stories260K-2048"
    shutil.copytree(stories_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return model


@pytest.fixture
def short_wikitext(tmp_path, monkeypatch):
    """A data directory (PRUNING_DATA_DIR, the setting the example does not name) whose WikiText-2 test split
    is the split's first 8,000 characters (two windows): the example's evaluation reads the whole split."""
    data = tmp_path / "data"
    (data / "wikitext-2-raw-v1").mkdir(parents=True)
    for name in ("wiki.test.raw", "wiki.valid.raw"):
        text = (DATA_DIR / "wikitext-2-raw-v1" / name).read_text(encoding="utf-8")
        (data / "wikitext-2-raw-v1" / name).write_text(text[:8000], encoding="utf-8")
    monkeypatch.setenv("PRUNING_DATA_DIR", str(data))
    return data


def test_perslm_model_pruner_example_runs_verbatim(long_context_stories, short_wikitext, tmp_path, monkeypatch,
                                                   capsys):
    monkeypatch.chdir(tmp_path)
    code = (PERSLM_EXAMPLE.replace("from deployment.optimize_inference import", "from pruning import")
            .replace("your/model/path", str(long_context_stories)).replace('"output"', f'"{tmp_path / "output"}"'))
    assert code.count("\n") == PERSLM_EXAMPLE.count("\n")  # line for line the document's
    exec(compile(code, "perslm_example.py", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    first, final = (eval(line.split(": ", 1)[1]) for line in printed if line.startswith(("After", "Final")))
    assert first["after_steps"] == ["heads", "layers"] and first["seqlen"] == 2048
    assert final["after_steps"] == ["heads", "layers", "magnitude"] and final["ppl"] > 1
    report = report_of(tmp_path / "output")
    assert [step["method"] for step in report["options"]["steps"]] == ["heads", "layers", "magnitude"]
    assert report["options"]["steps"][0]["fraction"] == 0.15 and report["options"]["steps"][2]["target"][
        "sparsity"] == 0.3
    model, _ = pruning.load_model(tmp_path / "output")
    assert model.config.num_hidden_layers == 4  # 0.2 of 5 layers removed


# ------------------------------------------------------------------------ 1. PersLM's `all` and its defaults

def stage_ratios(report: dict) -> list[tuple]:
    return [(s["method"], s.get("fraction", s.get("target", {}).get("sparsity"))) for s in report["options"]["stages"]]


@pytest.mark.parametrize("flags,stages", [
    # "To apply all pruning methods in sequence": the flags not given take the document's defaults
    (["--sparsity", "0.5"], [("heads", 0.1), ("layers", 0.1), ("magnitude", 0.5)]),
    (["--layer-reduction", "0.25"], [("heads", 0.1), ("layers", 0.25), ("magnitude", 0.3)]),
    (["--head-reduction", "0.15", "--layer-reduction", "0.25", "--sparsity", "0.5"],
     [("heads", 0.15), ("layers", 0.25), ("magnitude", 0.5)]),
    (["--head-reduction", "0", "--sparsity", "0.5"], [("layers", 0.1), ("magnitude", 0.5)]),  # 0 leaves a stage out
])
def test_perslm_all_runs_every_stage_with_the_documented_defaults(stories_dir, tmp_path, flags, stages):
    out = tmp_path / "all"
    assert cli_main(["prune", "--model", str(stories_dir), "--method", "all", *flags, "--output-dir", str(out),
                     *QUICK]) == 0
    report = report_of(out)
    assert stage_ratios(report) == stages
    assert [s["stage"] for s in report["result"]["stages"]] == [method for method, _ in stages]
    assert all(s["parameters_removed"] > 0 for s in report["result"]["stages"] if s["stage"] != "magnitude")
    assert report["result"]["total_sparsity"] > 0
    model, _ = pruning.load_model(out)
    assert model.config.num_hidden_layers == 5 - any(method == "layers" for method, _ in stages)


def test_perslm_all_defaults_hold_in_the_library_too():
    """The API's `all` is the command's: one home for the defaults (methods/combined.py)."""
    assert stage_ratios({"options": pruning.build_method("all", sparsity=0.5).options()}) == [
        ("heads", 0.1), ("layers", 0.1), ("magnitude", 0.5)]
    with pytest.raises(ValueError, match="every stage is left out"):
        pruning.build_method("all", head_fraction=0, layer_fraction=0, sparsity=0)


def test_workflow_all_entry_without_ratios_runs_the_documented_defaults(tmp_path):
    from test_preflight import workflow_problems

    assert workflow_problems(lambda c: c["methods"].update(perslm={"method": "all"}), tmp_path) == []


# ------------------------------------------------------------------------ 2. PersLM's GGUF conversion

@pytest.fixture
def perslm_workdir(tmp_path, monkeypatch):
    """An empty working directory: PersLM's outputs go to models/pruned/... under it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_perslm_convert_with_quantization_writes_beside_the_model(stories_dir, perslm_workdir, capsys):
    """`convert --model models/pruned/MODEL_NAME-distill_pruned --quantization q4_k_m`, after the document's
    distillation-guided prune (one distillation step here)."""
    import gguf

    training = perslm_workdir / "your_dataset.txt"
    training.write_text((DATA_DIR / "wikitext-2-raw-v1" / "wiki.valid.raw").read_text(encoding="utf-8")[:600])
    assert cli_main(["prune", "--model", str(stories_dir), "--method", "distillation", "--sparsity", "0.3",
                     "--training-data", str(training), "--option", "max_steps=1", "--option", "train_seqlen=64",
                     *QUICK]) == 0
    capsys.readouterr()
    model = Path("models/pruned/stories260K-distill_pruned")
    quantized = pytest.importorskip("llama_cpp") and "q4_k_m"
    assert cli_main(["convert", "--model", str(model), "--quantization", quantized]) == 0
    written = model.with_name(f"{model.name}-q4_k_m.gguf")  # beside the model folder, never inside it
    assert json.loads(capsys.readouterr().out)["output"] == str(written)
    reader = gguf.GGUFReader(written)
    assert int(reader.get_field("general.file_type").parts[-1][0]) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in model.iterdir() if p.suffix != ".gguf")

    # the same values as optimize (8bit = q8_0), and the output rule guards the default path like any other
    assert cli_main(["convert", "--model", str(model), "--quantization", "8bit"]) == 0
    assert json.loads(capsys.readouterr().out)["outtype"] == "q8_0"
    foreign = model.with_name(f"{model.name}-f16.gguf")
    foreign.write_text("a user's file")
    assert cli_main(["convert", "--model", str(model), "--quantization", "f16"]) == 2
    assert "was not written by this tool" in one_line_error(capsys) and foreign.read_text() == "a user's file"
    assert cli_main(["convert", "--model", str(model), "--quantization", "3bit"]) == 2
    assert "4bit or 8bit" in one_line_error(capsys)
    with pytest.raises(SystemExit, match="2"):
        cli_main(["convert", "--model", str(model), "--quantization", "q8_0", "--outtype", "q8_0"])
    assert "not allowed with argument" in one_line_error(capsys)


# ------------------------------------------------------------------------ 8. PP-LLMs' command line and defaults

@pytest.fixture(scope="module")
def wikitext_excerpt(tmp_path_factory):
    """The start of WikiText-2 test: the runs that evaluate, quickly."""
    path = tmp_path_factory.mktemp("eval") / "test-excerpt.txt"
    path.write_text((DATA_DIR / "wikitext-2-raw-v1" / "wiki.test.raw").read_text(encoding="utf-8")[:20000])
    return path


def test_ppllms_command_line_as_its_readme_writes_it(stories_dir, tmp_path, wikitext_excerpt, capsys):
    """`python ppllms.py --model_name M --num_blocks 5 --prune_rate 0.25 --mha_ffn_ratio 2.0 --eval_ppl True`
    (stories260K has 5 blocks), and the same without --mha_ffn_ratio: the README's default 2.0 applies, so both
    remove 2 FFN and 1 MHA sub-block (without the default the counts would be 2 FFN + 0 MHA)."""
    ours = ["--seqlen", "64", "--eval-dataset", str(wikitext_excerpt), "--max-windows", "2", *QUICK]
    common = ["ppllms", "--model_name", str(stories_dir), "--num_blocks", "5", "--prune_rate", "0.25",
              "--nsamples", "4"]
    assert cli_main([*common, "--mha_ffn_ratio", "2.0", "--eval_ppl", "True", "--output-dir", str(tmp_path / "a"),
                     *ours]) == 0
    assert cli_main([*common, "--eval_ppl", "--output-dir", str(tmp_path / "b"), *ours]) == 0
    given, default = (report_of(tmp_path / name) for name in "ab")
    for report in (given, default):
        assert report["method"] == "two_stage" and report["options"]["ffn_attention_ratio"] == 2.0
        assert (len(report["result"]["ffn_removed_layers"]), len(report["result"]["mha_removed_layers"])) == (2, 1)
        assert report["calibration"]["source"] == "c4" and report["calibration"]["nsamples"] == 4
        assert report["evaluation"]["after"]["ppl"] > 1  # eval_ppl True, and the bare flag
    assert given["result"]["mha_removed_layers"] == default["result"]["mha_removed_layers"]
    summary = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    assert summary["format"] == "ppllms" and summary["mha_removed_layers"] == given["result"]["mha_removed_layers"]


def test_ppllms_flags_and_job_file_are_one_translation(stories_dir, tmp_path, capsys):
    """The flags become the job file's mapping: the same keys in a file give the same prune.json options and
    choices, and a bad value is refused in the same words, before any model loads."""
    small = ["--seqlen", "64", *QUICK]
    job = tmp_path / "ppllms.json"
    job.write_text(json.dumps({"model_name": str(stories_dir), "prune_rate": 0.25, "nsamples": 4, "eval_ppl": False}))
    assert cli_main(["run", str(job), "--output-dir", str(tmp_path / "file"), *small]) == 0
    assert cli_main(["ppllms", "--model-name", str(stories_dir), "--prune_rate=0.25", "--nsamples", "4",
                     "--eval_ppl=False", "--output-dir", str(tmp_path / "flags"), *small]) == 0
    capsys.readouterr()
    from_file, from_flags = report_of(tmp_path / "file"), report_of(tmp_path / "flags")
    assert from_file["evaluation"] is None and from_flags["evaluation"] is None
    assert from_file["options"] == from_flags["options"] and from_file["calibration"] == from_flags["calibration"]
    assert from_file["result"]["mha_removed_layers"] == from_flags["result"]["mha_removed_layers"]
    for bad, message in ((["--prune_rate", "lots"], "prune_rate must be"), (["--num_blocks", "32"],
                                                                            "num_blocks 32 but the model has 5"),
                         (["--ffn_remove_layers", "2"], "ffn_remove_layers without mha_remove_layers"),
                         (["--eval_ppl", "yes"], "eval_ppl must be true or false")):
        assert cli_main(["ppllms", "--model_name", str(stories_dir), *bad, "--output-dir", str(tmp_path / "bad"),
                         *small]) == 2
        assert message in one_line_error(capsys)
        assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------ 4. PruneGPT's and Quark's test split

# PruneGPT's README: "A sample config is provided here", each key with its example value; model_name,
# save_directory and log_file are this run's, num_blocks_to_prune and skip_blocks fit stories260K's 5 blocks,
# and quantize is off (bitsandbytes' CPU kernel cannot pack stories260K's widths; see documents.md).
PRUNEGPT_README_CONFIG = {
    "model_name": "microsoft/Phi-3-mini-4k-instruct", "quantize": False,
    "bnb_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                   "bnb_4bit_compute_dtype": "float16"},
    "dataset": {"name": "wikitext", "subset": "wikitext-2-raw-v1", "split": "test", "batch_size": 8},
    "num_blocks_to_prune": 5, "skip_blocks": [0, 1, 2, 3, -1, -2], "pruning_method": "angular_distance",
    "pruning_token": "last", "save_directory": "models/phi3_pruned_model", "log_file": "pruning_phi3.log",
    "calculate_ppl": True,
}


def test_prunegpt_readme_config_selects_on_test_and_the_tables_say_so(stories_dir, tmp_path, wikitext_excerpt, capsys):
    """The README's config, run as `python -m pruning run config.json`: accepted, one warning line (stderr and
    PruneGPT's log_file), prune.json's selection_split, and the † mark with its caption note in the tables."""
    from pruning.reporting.metric_files import collect
    from pruning.reporting.tables import build_tables

    config = {**PRUNEGPT_README_CONFIG, "model_name": str(stories_dir), "save_directory": str(tmp_path / "pruned"),
              "log_file": str(tmp_path / "pruning.log"), "num_blocks_to_prune": 1, "skip_blocks": [0, -1]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    evaluation = dict(dataset=str(wikitext_excerpt), seqlen=64, max_windows=2, device="cpu")
    assert cli_main(["run", str(tmp_path / "config.json"), "--nsamples", "4", "--seqlen", "64",
                     "--dataset", evaluation["dataset"], "--max-windows", "2", *QUICK]) == 0
    stderr = capsys.readouterr().err
    report = report_of(tmp_path / "pruned")
    assert report["selection_split"] == "test" and report["calibration"]["source"] == "wikitext2-test"
    assert report["calibration"]["nsamples"] == 4 and report["options"]["criterion"] == "angular"
    warning = [line for line in stderr.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "evaluation split" in warning[0] and "wikitext2-test" in warning[0], stderr
    assert warning[0].split(" - ", 2)[2] in (tmp_path / "pruning.log").read_text()

    metrics = tmp_path / "results" / "metrics" / "stories260K"
    pruning.evaluate_perplexity(str(stories_dir), output=str(metrics / "dense" / "base" / "ppl.json"), **evaluation)
    run = metrics / "prunegpt" / "L1"
    run.mkdir(parents=True)
    shutil.copy(tmp_path / "pruned" / "prune.json", run / "prune.json")  # as the workflow's prune rule does
    pruning.evaluate_perplexity(str(tmp_path / "pruned"), output=str(run / "ppl.json"), **evaluation)
    tables = {table.name: table for table in build_tables(collect(tmp_path / "results"))}
    depth, removal = tables["depth-stories260K"], tables["layer-removal"]
    assert depth.display.loc[depth.display["# Blocks"] == "1"].iloc[0, -1].endswith(" †")
    assert removal.display["method"].tolist() == ["prunegpt †"]
    for table in (depth, removal, tables["summary"]):
        assert "† Selected on test: stories260K prunegpt (1 block) chose what to prune on the evaluation split" in table.caption
    assert (depth.data.metric == "selection_split").any()  # the CSV names the file behind the mark


def test_test_split_selection_only_through_the_documents_path(stories_dir, tmp_path, capsys, no_work):
    """Validation stays the default everywhere else: `prune --calib wikitext2-test`, the API without the switch,
    the switch with another source and a selection split on a PruneGPT file are refused before any work (a
    workflow protocol calibrating on test is refused by the config schema)."""
    assert cli_main(["prune", "--model", str(stories_dir), "--method", "wanda", "--sparsity", "0.5", "--calib",
                     "wikitext2-test", "--output-dir", str(tmp_path / "out"), *QUICK]) == 2
    assert "must not use the evaluation split" in one_line_error(capsys)
    with pytest.raises(ValueError, match="must not use the evaluation split"):
        pruning.prune(str(stories_dir), "depth", tmp_path / "out", num_blocks=1, calib="wikitext2-test")
    with pytest.raises(ValueError, match="selection on the test split calibrates on wikitext2-test, not 'c4'"):
        pruning.prune(str(stories_dir), "depth", tmp_path / "out", num_blocks=1, calib="c4", selection_on_test=True)
    prunegpt = tmp_path / "prunegpt.json"
    prunegpt.write_text(json.dumps({"num_blocks_to_prune": 1}))
    assert cli_main(["run", str(prunegpt), "--model", str(stories_dir), "--output-dir", str(tmp_path / "out"),
                     "--selection-split", "test", *QUICK]) == 2
    assert "names its data in dataset.split" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_quark_search_on_test_as_its_tutorial(stories_dir, tmp_path, capsys):
    """Quark's config with `--selection-split test` searches its windows on WikiText-2 test; without it, on
    validation (no selection_split recorded)."""
    quark = tmp_path / "quark.json"
    quark.write_text(json.dumps({"name": "layer_importance_depth_pruning", "delete_layer_num": 1,
                                 "model_decoder_layers": "model.layers", "layer_norm_field": "model.norm",
                                 "layer_num_field": "num_hidden_layers", "save_gpu_memory": True}))
    common = ["run", str(quark), "--model", str(stories_dir), "--nsamples", "4", "--seqlen", "64", *QUICK]
    assert cli_main([*common, "--selection-split", "test", "--output-dir", str(tmp_path / "test")]) == 0
    assert json.loads(capsys.readouterr().out)["selection_split"] == "test"
    assert cli_main([*common, "--output-dir", str(tmp_path / "validation")]) == 0
    on_test, on_validation = report_of(tmp_path / "test"), report_of(tmp_path / "validation")
    assert on_test["selection_split"] == "test" and on_test["calibration"]["source"] == "wikitext2-test"
    assert "selection_split" not in on_validation
    assert on_validation["calibration"]["source"] == "wikitext2-validation"


# ------------------------------------------------------------------------ 10. remote code (deepseek-moe)

REMOTE_MODELING = '''"""A causal LM whose class lives in the model folder, as deepseek-moe's does."""
import os

from transformers import LlamaForCausalLM

with open(os.environ["REMOTE_CODE_MARKER"], "a") as marker:  # proof that this file ran
    marker.write("imported\\n")


class TinyRemoteForCausalLM(LlamaForCausalLM):
    pass
'''


@pytest.fixture
def remote_model(stories_dir, tmp_path, monkeypatch):
    """stories260K's weights and tokenizer (a LlamaForCausalLM's, which the folder's class extends) with
    config.json's auto_map pointing at modeling_tiny.py in the folder; REMOTE_CODE_MARKER gets a line each time
    that file is imported. The folder's name is unique: transformers caches remote modules by folder name."""
    import uuid

    model = tmp_path / f"remote-{uuid.uuid4().hex[:8]}"
    shutil.copytree(stories_dir, model)
    (model / "modeling_tiny.py").write_text(REMOTE_MODELING)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "remote-code-ran.txt"
    monkeypatch.setenv("REMOTE_CODE_MARKER", str(marker))
    return model, marker


def quark_job(tmp_path) -> Path:
    """Quark's depth-pruning config (its table prunes deepseek-moe, a remote-code model)."""
    job = tmp_path / "quark.json"
    job.write_text(json.dumps({"name": "layer_importance_depth_pruning", "delete_layer_num": 1}))
    return job


def test_remote_code_refused_without_the_opt_in_and_never_run(remote_model, tmp_path, capsys):
    model, marker = remote_model
    for argv in (["run", str(quark_job(tmp_path)), "--model", str(model), "--output-dir", str(tmp_path / "out"),
                  *QUICK],["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5", "--output-dir",
                  str(tmp_path / "out"), *QUICK],
                 ["eval", "--model", str(model), "--ppl", "--seqlen", "64", "--max-windows", "1", *QUICK],
                 ["convert", "--model", str(model), "--outtype", "f16", "--output", str(tmp_path / "m.gguf")]):
        assert cli_main(argv) == 2, argv
        err = one_line_error(capsys)
        assert "auto_map: modeling_tiny.TinyRemoteForCausalLM" in err and "--trust-remote-code" in err, err
    with pytest.raises(ValueError, match="runs only with --trust-remote-code"):
        pruning.prune(str(model), "magnitude", tmp_path / "out", sparsity=0.5)
    with pytest.raises(ValueError, match="runs only with --trust-remote-code"):
        pruning.ModelPruner(str(model))
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "m.gguf").exists()


def test_remote_code_with_the_opt_in_prunes_and_reloads(remote_model, tmp_path, capsys):
    model, marker = remote_model
    out = tmp_path / "pruned"
    assert cli_main(["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5", "--output-dir",
                     str(out), "--trust-remote-code", *QUICK]) == 0
    assert marker.read_text().count("imported") >= 1  # the folder's code ran: the user asked for it
    report = report_of(out)
    assert report["trust_remote_code"] is True and report["result"]["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert (out / "modeling_tiny.py").is_file() and "auto_map" in json.loads((out / "config.json").read_text())
    reloaded, _ = pruning.load_model(out, trust_remote_code=True)
    assert type(reloaded).__name__ == "TinyRemoteForCausalLM"
    assert report["parameters"]["after"]["nonzero"] < report["parameters"]["before"]["nonzero"]
    with pytest.raises(ValueError, match="runs only with --trust-remote-code"):
        pruning.load_model(out)  # the result is a remote-code model too
    capsys.readouterr()
    assert cli_main(["eval", "--model", str(out), "--ppl", "--seqlen", "64", "--max-windows", "1",
                     "--trust-remote-code", *QUICK]) == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 1
    assert cli_main(["run", str(quark_job(tmp_path)), "--model", str(model), "--output-dir", str(tmp_path / "quark"),
                     "--nsamples", "2", "--seqlen", "32", "--trust-remote-code", *QUICK]) == 0
    assert report_of(tmp_path / "quark")["trust_remote_code"] is True
    assert pruning.load_model(tmp_path / "quark", trust_remote_code=True)[0].config.num_hidden_layers == 4


def test_workflow_trust_remote_code_key(remote_model, tmp_path):
    """The workflow's `trust_remote_code` (default off): without it a remote-code model is refused when the
    workflow plans; with it the prune, perplexity and zero-shot jobs get --trust-remote-code, and the stages
    that load no remote code (GGUF export, speed) must leave the model out."""
    from pruning.preflight import WorkflowConfig
    from test_preflight import workflow_problems

    model, marker = remote_model

    def with_remote(config, **settings):
        config["models"]["remote"] = str(model)
        config.update(settings)

    refused = workflow_problems(with_remote, tmp_path)
    assert refused == ["config.models.remote: config.json maps to code in the model folder (auto_map: "
                       "modeling_tiny.TinyRemoteForCausalLM), which runs only with trust_remote_code: true; read "
                       "that code first"]
    assert workflow_problems(lambda c: with_remote(c, trust_remote_code=True), tmp_path) == []
    assert workflow_problems(lambda c: with_remote(c, trust_remote_code=True, gguf={"outtypes": ["f16"]}),
                             tmp_path) == ["config.gguf.models: remote holds code of its own (auto_map), which the "
                                           "gguf jobs do not load; leave it out of gguf.models"]
    runtime = WorkflowConfig({"device": "cpu", "dtype": "float32", "data_dir": None, "trust_remote_code": True},
                             tmp_path).runtime_arguments()
    assert "--trust-remote-code" in runtime
    assert "--trust-remote-code" not in WorkflowConfig({"device": "cpu", "dtype": "float32", "data_dir": None,
                                                        "trust_remote_code": False}, tmp_path).runtime_arguments()
    assert not marker.exists()  # planning reads config.json only
