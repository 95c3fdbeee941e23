"""`python -m pruning run`: the shipped PruneGPT / Quark / PP-LLMs job files on stories260K give what the plain
CLI gives, Quark's module paths prune a family without an adapter, PruneGPT's quantize scores on a
bitsandbytes 4-bit copy, and bad job files are refused in one line before any work."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import DATA_DIR, REPO, tiny_config
from pruning.compat import job_files as jobs
from pruning.cli import main
from pruning.methods.two_stage import counts_for_rate

JOBS = REPO / "config" / "jobs"
SMALL = ["--nsamples", "4", "--seqlen", "64", "--quiet"]
CALIBRATION = {"prunegpt": "wikitext2-validation", "quark": "wikitext2-validation", "ppllms": "c4"}
# the same pruning with `prune` (what each job file must translate to)
PLAIN = {
    "prunegpt": ["--method", "depth", "--num-blocks", "2", "--option", "criterion=angular", "--option", "tokens=last",
                 "--option", "skip_blocks=[0,-1]", "--batch-size", "8"],
    "quark": ["--method", "depth", "--num-blocks", "2", "--option", "criterion=perplexity"],
    "ppllms": ["--method", "two_stage", "--prune-rate", "0.25", "--option", "ffn_attention_ratio=2.0"],
}
REMOVED = ("removed_layers", "ffn_removed_layers", "mha_removed_layers")
LOGGED = {"prunegpt": ["Pruning 2 blocks using angular_distance and last tokens.", "depth angular scores per block: 1:",
                       "test-excerpt.txt perplexity after pruning"],
          "quark": ["depth perplexity scores per block: 0-1:"],
          "ppllms": ["two_stage: BI scores of all 5 layers", "(candidates)", "round 1/", "MHA removed layers",
               "test-excerpt.txt perplexity after pruning"]}


def _report(directory: Path) -> dict:
    return json.loads((directory / "prune.json").read_text())


def _job_file(tmp_path: Path, values: dict, name: str = "job.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("fmt, name", [("prunegpt", "prunegpt.json"), ("quark", "quark.yaml"), ("ppllms", "ppllms.json")])
def test_shipped_job_file_prunes_as_the_plain_cli_and_reloads(fmt, name, stories_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    log = tmp_path / "logs" / "job.log"
    evaluation = tmp_path / "test-excerpt.txt"  # the start of WikiText-2 test: the jobs that evaluate, quickly
    evaluation.write_text((DATA_DIR / "wikitext-2-raw-v1" / "wiki.test.raw").read_text(encoding="utf-8")[:20000])
    assert main(["run", str(JOBS / name), "--model", str(stories_dir), "--output-dir", str(tmp_path / "job"),
                 "--dataset", str(evaluation), "--max-windows", "2", "--log-file", str(log), *SMALL]) == 0
    assert main(["prune", "--model", str(stories_dir), "--output-dir", str(tmp_path / "plain"),
                 "--calib", CALIBRATION[fmt], *PLAIN[fmt], *SMALL]) == 0
    job, plain = _report(tmp_path / "job"), _report(tmp_path / "plain")
    assert job["options"] == plain["options"] and job["calibration"] == plain["calibration"]
    assert {k: job["result"].get(k) for k in REMOVED} == {k: plain["result"].get(k) for k in REMOVED}
    assert job["parameters"]["after"] == plain["parameters"]["after"]
    assert job["parameters"]["after"]["total"] < job["parameters"]["before"]["total"]
    if fmt == "ppllms":
        assert job["result"]["mha_removed_layers"], "mha_ffn_ratio 2 asks for attention rounds"
    assert (job["evaluation"] is not None) == (fmt != "quark")  # calculate_ppl, eval_ppl
    logged = log.read_text()
    assert all(line in logged for line in LOGGED[fmt]), logged
    assert "two_stage: BI scores" in capsys.readouterr().err if fmt == "ppllms" else True
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "job")
    assert sum(p.numel() for p in reloaded.parameters()) == job["parameters"]["after"]["total"]


def test_quark_paths_depth_prune_a_family_without_adapter(stories_dir, tmp_path):
    """bloom has no adapter: Quark's model_decoder_layers / layer_norm_field are enough to depth-prune it, and the
    saved model is the original without the chosen layers (same logits)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pruning.core.adapters import paths_adapter
    from pruning.core.surgery import remove_layers

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("bloom", vocab_size=512, n_layer=4, hidden_size=64, n_head=4)).eval()
    model.save_pretrained(tmp_path / "bloom")
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(tmp_path / "bloom")
    quark = {"delete_layer_num": 2, "layer_num_field": "n_layer", "save_gpu_memory": False}
    args = ["--model", str(tmp_path / "bloom"), *SMALL]

    bare = _job_file(tmp_path, quark, "bare.json")
    assert main(["run", str(bare), "--output-dir", str(tmp_path / "refused"), *args]) == 2
    assert not (tmp_path / "refused").exists()

    paths = _job_file(tmp_path, {**quark, "model_decoder_layers": "transformer.h", "layer_norm_field": "transformer.ln_f"})
    assert main(["run", str(paths), "--output-dir", str(tmp_path / "out"), *args]) == 0
    removed = _report(tmp_path / "out")["result"]["removed_layers"]
    assert len(removed) == 2 and removed[1] == removed[0] + 1
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.n_layer == 2
    remove_layers(model, paths_adapter("bloom", "transformer.h", "transformer.ln_f"), removed)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("values, message", [
    ({"num_blocks_to_prune": 1, "pruning_methd": "angular_distance"}, "unknown prunegpt key 'pruning_methd'"),
    ({"num_blocks_to_prune": 1, "dataset": {"name": "wikitext", "rows": 5}}, "unknown PruneGPT dataset key 'dataset.rows'"),
    ({"num_blocks_to_prune": 1, "dataset": {"name": "wikitext", "subset": "wikitext-2-raw-v1", "split": "dev"}},
     "dataset.split must be train, validation or test"),  # test is PruneGPT's example (test_documents_fidelity)
    ({"num_blocks_to_prune": "2"}, "num_blocks_to_prune must be an integer"),
    ({"delete_layer_num": 2, "prune_rate": 0.2}, "keys of quark and ppllms mixed"),
    ({"model_name": "x"}, "no PruneGPT, Quark or PP-LLMs key found"),
    ({"delete_layer_num": 2, "model_decoder_layers": "model.decoder.layers", "layer_norm_field": "model.norm"},
     "model_decoder_layers 'model.decoder.layers' does not name the llama model's 'model.layers'"),
    ({"prune_rate": 0.25, "num_blocks": 32}, "num_blocks 32 but the model has 5 layers"),
    ({"ffn_remove_layers": 2}, "ffn_remove_layers without mha_remove_layers"),
    ({"prune_rate": 0.25, "mha_ffn_ratio": 0}, "ffn_attention_ratio must be a number > 0"),
    ({"num_blocks_to_prune": 2, "quantize": True, "bnb_config": {"load_in_4bit": True, "bnb_4bit_typo": 1}},
     "bnb_config: unknown key 'bnb_4bit_typo'"),
])
def test_bad_job_is_refused_in_one_line_before_work(values, message, stories_dir, tmp_path, capsys):
    job = _job_file(tmp_path, values)
    assert main(["run", str(job), "--model", str(stories_dir), "--output-dir", str(tmp_path / "out"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_quantize_refused_without_bitsandbytes_naming_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(jobs.JobError, match="needs the bitsandbytes package, which is not installed"):
        jobs.check_quantization({"load_in_4bit": True}, "cpu", {})


def test_ffn_attention_ratio_picks_pp_llms_pair():
    ffn, attention, layers, target = 33088, 12352, 12, 150_000
    n, m = counts_for_rate(target, ffn, attention, layers, 2.0)
    near = [(a, b) for a in range(1, layers) for b in range(1, a + 1) if abs(a / b - 2.0) <= 0.4]
    assert (n, m) in near
    assert abs(n * ffn + m * attention - target) == min(abs(a * ffn + b * attention - target) for a, b in near)
    assert counts_for_rate(target, ffn, attention, layers) != (n, m)  # real sizes alone pick another pair
    with pytest.raises(ValueError, match="ffn_attention_ratio"):
        counts_for_rate(target, ffn, attention, 2, 2.0)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_prunegpt_quantize_scores_on_4bit_and_saves_full_precision(stories_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = tiny_config("llama")  # widths that bitsandbytes' CPU 4-bit kernel takes (multiples of 64 / 32)
    config.num_hidden_layers, config.intermediate_size = 6, 128
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "tiny")
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(tmp_path / "tiny")
    values = json.loads((JOBS / "prunegpt.json").read_text())
    values.update(calculate_ppl=False, log_file=None)
    runs = {}
    for quantize in (True, False):
        job = _job_file(tmp_path, {**values, "quantize": quantize}, f"q{quantize}.json")
        out = tmp_path / f"out-{quantize}"
        assert main(["run", str(job), "--model", str(tmp_path / "tiny"), "--output-dir", str(out), *SMALL]) == 0
        runs[quantize] = _report(out)["result"]
    quantized = runs[True]
    assert quantized["scored_on"]["quantization"]["load_in_4bit"] and "scored_on" not in runs[False]
    assert quantized["scores"] != runs[False]["scores"]  # computed on the 4-bit weights
    assert len(quantized["removed_layers"]) == 2
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out-True")
    kept = [i for i in range(6) if i not in quantized["removed_layers"]]
    for new, old in enumerate(kept):  # the full-precision weights, not dequantized ones
        for (name, a), (_, b) in zip(saved.model.layers[new].named_parameters(), model.model.layers[old].named_parameters()):
            assert torch.equal(a, b), name


def test_quantize_refusal_names_the_cpu_kernel_limit(stories_dir, monkeypatch):
    """stories260K's intermediate size (172) is no multiple of 64: refused before loading on an AVX512-BF16 CPU."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional

    monkeypatch.setattr(bitsandbytes.functional, "has_avx512bf16", lambda: True)
    config = json.loads((stories_dir / "config.json").read_text())
    with pytest.raises(jobs.JobError, match=r"intermediate_size \(172\) to be a multiple of 64"):
        jobs.check_quantization({"load_in_4bit": True}, "cpu", config)
