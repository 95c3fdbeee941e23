"""Memory estimates against exact counts: parameters of the loaded model, the bytes of a real KV cache, the tensor
bytes of GGUF files the exporter and llama.cpp actually write, and measured peak RSS on stories260K."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from pruning.core import dtypes, footprint
from pruning.evaluation import memory
from pruning.core import surgery as structure
from pruning.core.adapters import get_adapter
from pruning.export.gguf import export_gguf
from pruning.core.modeling import parameter_counts, save_model


def _cache_bytes(model, context: int, batch: int) -> list[int | None]:
    """Bytes of the KV cache transformers really holds per layer after one forward pass (None: nothing cached)."""
    tokens = torch.randint(0, model.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(tokens, use_cache=True).past_key_values
    return [layer.keys.nbytes + layer.values.nbytes if layer.keys is not None else None for layer in cache.layers]


def _assert_kv_exact(path, dtype, model, context, batch):
    """Every layer caches exactly the estimate, a removed attention its placeholder (one value per token)."""
    element = dtypes.dtype_bytes(dtype)
    geometry = footprint.geometry(*footprint.meta_model(path))
    estimated = footprint.kv_cache_layer_bytes(geometry, context, batch, element)
    real = _cache_bytes(model, context, batch)
    for shape, guess, got in zip(geometry.layers, estimated, real):
        if shape.heads:
            assert guess == got
        else:
            assert guess == 2 * batch * context * element and got == guess
    return sum(estimated)


@pytest.fixture(scope="module")
def pruned_stories(stories_dir, tmp_path_factory):
    """stories260K with unequal layers: half the query heads of layer 0, no attention in layer 1, no FFN in
    layer 2, a narrower FFN in layer 3 (saved in the heterogeneous format)."""
    model = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    adapter = get_adapter(model)
    structure.slice_heads(model, adapter, 0, [0, 1, 2, 3])
    structure.remove_attention(model, adapter, 1)
    structure.remove_feed_forward(model, adapter, 2)
    structure.slice_feed_forward(model, adapter, 3, list(range(100)))
    dest = tmp_path_factory.mktemp("pruned") / "model"
    save_model(model, AutoTokenizer.from_pretrained(stories_dir), dest)
    return dest


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_parameters_weights_and_kv_cache_are_exact(stories_dir, pruned_stories, which):
    path = stories_dir if which == "dense" else pruned_stories
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    report = memory.estimate(path, "float32", context=40, batch=3, measure_runtime=False)
    exact = parameter_counts(model)["total"]
    assert report["parameters"] == exact and report["heterogeneous"] == (which == "pruned")
    assert report["weights_bytes"] == {"float32": 4 * exact, "bfloat16": 2 * exact, "float16": 2 * exact}
    assert report["kv_cache_bytes"] == _assert_kv_exact(path, "float32", model, 40, 3)
    half = memory.estimate(path, "bfloat16", context=40, batch=3, measure_runtime=False)
    assert half["kv_cache_bytes"] == _assert_kv_exact(path, "bfloat16", model.to(torch.bfloat16), 40, 3)
    assert half["load_conversion_bytes"] > 0 == report["load_conversion_bytes"]  # float32 file read as bfloat16
    assert report["total_bytes"] == (report["weights_bytes"]["float32"] + report["kv_cache_bytes"]
                                     + report["activation_bytes"])
    if which == "pruned":  # grouped-query heads per layer: 2 of 4 key-value heads in layer 0, none in layer 1
        shapes = footprint.geometry(*footprint.meta_model(path)).layers
        assert [(s.heads, s.kv_heads, s.ffn) for s in shapes][:4] == [(4, 2, 172), (0, 0, 172), (8, 4, 0), (8, 4, 100)]


@pytest.mark.parametrize("family", ["gpt2", "opt", "gpt_neox", "phi3", "qwen3", "gemma2", "gemma3_text"])
def test_other_families_count_exactly(family, tmp_path):
    """Parameters and KV cache of tiny models of other families (fused projections, sliding-window layers)."""
    from conftest import build_tiny_model

    model = build_tiny_model(family)
    model.save_pretrained(tmp_path)
    report = memory.estimate(tmp_path, context=80, batch=2, measure_runtime=False)
    assert report["parameters"] == parameter_counts(model)["total"]
    assert report["kv_cache_bytes"] == sum(size for size in _cache_bytes(model, 80, 2) if size is not None)


def _real_tensor_bytes(path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)


@pytest.fixture(scope="module")
def wide_llama(stories_dir, tmp_path_factory):
    """A random 12-layer Llama whose rows split into 256-blocks (so the k-quant mixtures are not all fallbacks; 12
    layers so that name order, blk.10 before blk.2, matters), with stories260K's tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=12,
                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False)
    dest = tmp_path_factory.mktemp("wide") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(stories_dir / name, dest / name)
    return dest


@pytest.mark.parametrize("model,outtypes", [
    ("stories", ("f32", "f16", "q8_0", "q4_k_m", "q3_k_m")),
    ("wide", ("q4_0", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k")),
])
def test_gguf_bytes_equal_the_files_convert_writes(stories_dir, wide_llama, tmp_path, model, outtypes):
    """Tensor types decided as the exporter and llama.cpp's quantizer decide them: every byte accounted for."""
    path = stories_dir if model == "stories" else wide_llama
    report = memory.estimate(path, context=16, measure_runtime=False)
    for outtype in outtypes:
        if outtype not in memory.DIRECT_OUTTYPES:
            pytest.importorskip("llama_cpp")
        out = tmp_path / f"{outtype}.gguf"
        export_gguf(path, out, outtype)
        assert report["gguf_weights_bytes"][outtype] == _real_tensor_bytes(out), outtype


def test_gguf_bytes_of_a_pruned_model(pruned_stories, tmp_path):
    report = memory.estimate(pruned_stories, context=16, measure_runtime=False)
    export_gguf(pruned_stories, tmp_path / "p.gguf", "q8_0")
    assert report["gguf_weights_bytes"]["q8_0"] == _real_tensor_bytes(tmp_path / "p.gguf")


@pytest.mark.slow
def test_total_is_within_ten_percent_of_measured_peak_rss(stories_dir):
    report = memory.estimate(stories_dir, context=256, batch=2)
    measured = footprint.measured_peak_bytes(stories_dir, context=256, batch=2)
    assert abs(report["total_bytes"] - measured) <= 0.1 * measured, (report["total_bytes"], measured)


@pytest.mark.slow
def test_cli_reports_and_refuses_bad_lengths(stories_dir):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "pruning", "memory", "--model", str(stories_dir), *args],
                              capture_output=True, text=True)

    result = run("--context", "64", "--batch", "2", "--dtype", "bf16", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["context"] == 64 and report["batch"] == 2 and report["parameters"] == 260032
    assert report["dtype"] == "bfloat16"
    assert report["runtime_bytes"] > 0 and set(report["gguf_weights_bytes"]) >= {"f16", "q8_0", "q4_k_m"}
    too_long = run("--context", "100000")
    assert too_long.returncode == 2 and len(too_long.stderr.strip().splitlines()) == 1 and "512" in too_long.stderr
