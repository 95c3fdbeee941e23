"""Out-of-core pruning on stories260K: streamed layers give the in-memory path's weights bit for bit (mask methods,
the calibration-loss searches, head, width and sub-block removal), only one decoder layer is ever in memory
(two while a search runs a candidate's suffix), caps are honoured or refused before work, and failures leave nothing behind."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import pruning.core.footprint
import pruning.methods
from pruning import cli
from pruning.core import streaming
from pruning.api import prune

COMMON = dict(calib="c4", nsamples=4, seqlen=64, seed=1, device="cpu", progress=False)
CASES = {
    "wanda": ("wanda", {"sparsity": 0.5}),
    "sparsegpt-2:4": ("sparsegpt", {"nm": "2:4"}),
    "wanda-owl": ("wanda", {"sparsity": 0.5, "allocation": "owl", "owl_lambda": 0.1}),
    "wanda-bfloat16": ("wanda", {"sparsity": 0.5, "dtype": "bfloat16"}),  # fp32 file converted per layer
    "depth-angular": ("depth", {"num_blocks": 2, "criterion": "angular"}),
    "magnitude": ("magnitude", {"sparsity": 0.5}),
    # structured: searches borrow the layers after each candidate; layers change shape or lose sub-blocks
    "depth-perplexity": ("depth", {"num_blocks": 2, "criterion": "perplexity"}),
    "depth-block_ppl": ("depth", {"num_blocks": 1, "criterion": "block_ppl", "search_windows": 2}),
    "two_stage": ("two_stage", {"ffn_layers": 3, "attention_layers": 2}),
    # raced: one window per round (batch 1), so candidates are dropped between rounds
    "depth-perplexity-race": ("depth", {"num_blocks": 1, "criterion": "perplexity", "search": "race", "batch_size": 1}),
    "two_stage-race": ("two_stage", {"ffn_layers": 3, "attention_layers": 2, "search": "race", "batch_size": 1}),
    "heads-magnitude": ("heads", {"fraction": 0.25}),
    "heads-activation": ("heads", {"fraction": 0.25, "importance": "activation", "gqa": "group"}),
    "flap": ("flap", {"fraction": 0.2}),
    "all": ("all", {"head_fraction": 0.25, "layer_fraction": 0.2, "sparsity": 0.5}),
}


def tensors(directory):
    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        found.update(load_file(file))
    return found


@pytest.fixture(scope="module")
def paired(stories_dir, tmp_path_factory):
    """{case: (in-memory report, dir, streamed report, dir)}, pruned once per module."""
    root = tmp_path_factory.mktemp("streaming")
    runs = {}
    for case, (method, arguments) in CASES.items():
        memory = prune(str(stories_dir), method, root / f"{case}-memory", **COMMON, **arguments)
        streamed = prune(str(stories_dir), method, root / f"{case}-streamed", stream=True, **COMMON, **arguments)
        runs[case] = (memory, root / f"{case}-memory", streamed, root / f"{case}-streamed")
    return runs


@pytest.mark.parametrize("case", CASES)
def test_streamed_weights_equal_in_memory(paired, case):
    memory, memory_dir, streamed, streamed_dir = paired[case]
    expected, got = tensors(memory_dir), tensors(streamed_dir)
    assert set(got) == set(expected)
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"streamed weights differ: {different[:5]}"
    assert (streamed_dir / "config.json").read_text() == (memory_dir / "config.json").read_text()
    assert streamed["result"] == memory["result"]  # masks: per-module zeros, removed layers, scores
    assert streamed["parameters"] == memory["parameters"]
    assert (memory["memory"]["mode"], streamed["memory"]["mode"]) == ("in-memory", "streamed")
    on_disk = json.loads((streamed_dir / "prune.json").read_text())
    assert on_disk["memory"]["mode"] == "streamed" and on_disk["peak_rss_mb"] > 0
    assert not list(streamed_dir.glob(".*")), "staging left in the output"


def test_streamed_checkpoint_reloads_with_identical_logits(paired):
    _, memory_dir, _, streamed_dir = paired["depth-angular"]  # layers removed: shards renumbered
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(memory_dir, dtype=torch.float32)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(streamed_dir, dtype=torch.float32)(ids).logits
    assert torch.equal(expected, got)


@pytest.mark.parametrize("method, arguments, at_once", [
    ("sparsegpt", {"sparsity": 0.5}, 1),
    ("depth", {"num_blocks": 1, "criterion": "perplexity"}, 2),  # the visited layer and one of its suffix
    ("two_stage", {"ffn_layers": 2, "attention_layers": 1}, 1),  # its rounds walk outside the engine's visits
])
def test_few_decoder_layers_in_memory_at_a_time(stories_dir, tmp_path, monkeypatch, method, arguments, at_once):
    real_load = streaming.StreamedLayers.load
    most = []

    def counting_load(self, index):
        real_load(self, index)
        layers = self.adapter.decoder_layers(self.model)
        most.append(sum(any(not p.is_meta for p in layer.parameters()) for layer in layers))
    monkeypatch.setattr(streaming.StreamedLayers, "load", counting_load)
    prune(str(stories_dir), method, tmp_path / "out", stream=True, **COMMON, **arguments)
    assert most and max(most) == at_once


@pytest.mark.parametrize("method, arguments, writes", [
    ("depth", {"num_blocks": 2, "criterion": "perplexity"}, 0),  # scoring passes only; layers removed at the end
    ("wanda", {"sparsity": 0.5, "allocation": "owl", "owl_lambda": 0.1}, 5),  # outlier pass read only, pruning pass
    ("flap", {"fraction": 0.2}, 5),  # statistics and scores read only, slicing written
])
def test_scoring_passes_write_nothing_back(stories_dir, tmp_path, monkeypatch, method, arguments, writes):
    real_release = streaming.StreamedLayers.release
    released = []

    def counting_release(self, index):
        released.append(index)
        real_release(self, index)
    monkeypatch.setattr(streaming.StreamedLayers, "release", counting_release)
    prune(str(stories_dir), method, tmp_path / "out", stream=True, **COMMON, **arguments)
    assert len(released) == writes


def test_estimate_counts_a_search_suffix(stories_dir, monkeypatch):
    monkeypatch.setattr(pruning.core.footprint, "runtime_bytes", lambda _path: 300 * 2**20)
    angular, search = (streaming.estimate_pruning_memory(
        stories_dir, pruning.methods.build_method("depth", num_blocks=1, criterion=criterion), nsamples=4, seqlen=64)
        for criterion in ("angular", "perplexity"))
    assert angular["search_suffix_bytes"] == 0 and search["search_suffix_bytes"] > 0
    assert search["streamed"] - angular["streamed"] == search["largest_layer_bytes"] + search["search_suffix_bytes"]


def test_failure_while_streaming_leaves_nothing(stories_dir, tmp_path, monkeypatch):
    real_release = streaming.StreamedLayers.release

    def failing_release(self, index):
        if index == 2:
            raise RuntimeError("disk full")
        real_release(self, index)
    monkeypatch.setattr(streaming.StreamedLayers, "release", failing_release)
    with pytest.raises(RuntimeError, match="disk full"):
        prune(str(stories_dir), "wanda", tmp_path / "out", stream=True, sparsity=0.5, **COMMON)
    assert list(tmp_path.iterdir()) == []


def test_cap_chooses_streaming_and_is_recorded(stories_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pruning.core.footprint, "runtime_bytes", lambda _path: 300 * 2**20)  # fixed, not re-measured
    method = pruning.methods.build_method("wanda", sparsity=0.5)
    estimate = streaming.estimate_pruning_memory(stories_dir, method, nsamples=4, seqlen=64)
    assert estimate["streamed"] < estimate["in-memory"]
    cap = (estimate["streamed"] + estimate["in-memory"]) // 2
    report = prune(str(stories_dir), "wanda", tmp_path / "out", max_memory=cap, sparsity=0.5, **COMMON)
    assert report["memory"] == {"mode": "streamed", "max_memory_bytes": cap, "estimate_bytes": estimate}
    roomy = prune(str(stories_dir), "wanda", tmp_path / "roomy", max_memory="64GiB", sparsity=0.5, **COMMON)
    assert roomy["memory"]["mode"] == "in-memory" and roomy["memory"]["max_memory_bytes"] == 64 * 2**30


@pytest.mark.parametrize("flags, message", [
    (["--max-memory", "lots"], "--max-memory 'lots'"),
    (["--max-memory", "1MiB"], "below what pruning needs streamed"),
    (["--stream", "--evaluate"], "--evaluate needs the whole model"),
    (["--stream", "--save-format", "sparse-bitmask"], "--save-format sparse-bitmask"),
])
def test_bad_cap_or_streaming_request_refused_before_work(stories_dir, tmp_path, no_work, capsys, monkeypatch, flags,
                                                          message):
    monkeypatch.setattr(pruning.core.footprint, "runtime_bytes", lambda _path: 300 * 2**20)  # not re-measured
    out = tmp_path / "out"
    code = cli.main(["prune", "--model", str(stories_dir), "--method", "wanda", "--sparsity", "0.5", "--output-dir",
                     str(out), "--nsamples", "4", "--seqlen", "64", "--device", "cpu", "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method, arguments, named", [
    ("depth", ["--num-blocks", "1", "--option", "criterion=taylor"], "criterion taylor"),
    ("gradual", ["--sparsity", "0.5"], "method gradual"),
    ("all", ["--sparsity", "0.5", "--option", "training_data=c4"], "distills through the whole model"),
])
def test_methods_that_cannot_stream_are_refused(stories_dir, tmp_path, no_work, capsys, method, arguments, named):
    code = cli.main(["prune", "--model", str(stories_dir), "--method", method, *arguments, "--output-dir",
                     str(tmp_path / "out"), "--nsamples", "4", "--seqlen", "64", "--device", "cpu", "--quiet",
                     "--stream"])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "cannot stream" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, expected", [("2GiB", 2 * 2**30), ("1500MB", 1_500_000_000), ("4G", 4 * 2**30),
                                            ("0.5 GiB", 2**29), ("123", 123)])
def test_memory_sizes(text, expected):
    assert streaming.parse_memory_size(text) == expected
