"""GGUF export: round trip through the gguf reader (names, shapes, metadata, deci per-layer lists, data),
llama.cpp agreement with Hugging Face (perplexity on the same windows, greedy tokens, logits per family,
tokenizers), k-quants, and bad inputs. llama.cpp tests skip where llama-cpp-python is not installed."""
import json
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import pruning
from pruning.core import surgery as structure
from pruning.export import ExportError, export_gguf
from pruning.export.gguf_families import FAMILIES
from pruning.export.gguf_tensors import ZERO_FFN_WIDTH, qkv_grouping_order, rotary_interleave_order
from pruning.export.gguf_vocab import bpe_pre_tokenizer

from conftest import tiny_config

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog."
LLAMA_CPP_REASON = "llama-cpp-python is not importable (install it: pip install 'llm-pruning-zoo[llamacpp]')"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pruning", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason=LLAMA_CPP_REASON, exc_type=ImportError)


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def f32_data(tensor) -> np.ndarray:
    """A tensor's values as float32 in numpy (rows, cols) order, whatever its GGUF type."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(int(x) for x in reversed(tensor.shape)))


# --------------------------------------------------------------------------------- pruned models

def _edited(stories_dir, dest, edit):
    model, tokenizer = pruning.load_model(stories_dir)
    edit(model, pruning.get_adapter(model))
    pruning.save_model(model, tokenizer, dest)
    return dest


def _two_stage_like(model, adapter):
    """Per-layer heads, an FFN-free layer with attention, an identity layer, an attention-free layer."""
    structure.slice_heads(model, adapter, 1, [0, 1, 2, 3])
    structure.remove_feed_forward(model, adapter, 2)
    structure.remove_feed_forward(model, adapter, 3)
    structure.remove_attention(model, adapter, 3)
    structure.remove_attention(model, adapter, 4)


@pytest.fixture(scope="module")
def models(stories_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_models")
    return {
        "dense": stories_dir,
        "depth": _edited(stories_dir, root / "depth", lambda m, a: structure.remove_layers(m, a, [2])),
        "heterogeneous": _edited(stories_dir, root / "heterogeneous", _two_stage_like),
        "attention_free_first": _edited(stories_dir, root / "attention_free_first",
                                        lambda m, a: structure.remove_attention(m, a, 0)),
    }


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """Every model in f32, f16 and q8_0, written once for the module."""
    from importlib.metadata import version

    root = tmp_path_factory.mktemp("gguf_files")
    gguf_version = version("gguf")
    files = {}
    for name, path in models.items():
        for outtype in ("f32", "f16", "q8_0"):
            files[name, outtype] = root / f"{name}-{outtype}.gguf"
            report = export_gguf(path, files[name, outtype], outtype)
            assert report["bytes"] == files[name, outtype].stat().st_size
            assert report["gguf_version"] == gguf_version
    return files


# ---------------------------------------------------------------------------------------- maths

def test_every_gguf_family_is_a_pruning_family():
    """A model type is added once for pruning (adapters.py) and once for GGUF (gguf_families.py)."""
    assert set(FAMILIES) <= set(pruning.supported_model_types())


def test_rotary_interleave_order_matches_llama_cpp_rope():
    assert rotary_interleave_order(1, 4).tolist() == [0, 2, 1, 3]
    assert rotary_interleave_order(2, 4).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    # Hugging Face rotates halves, llama.cpp's NORM rope rotates adjacent pairs: the reordered vector
    # rotated llama.cpp's way is the reordered Hugging Face result.
    head_dim, position = 8, 5
    x = np.random.default_rng(0).standard_normal(head_dim)
    theta = position * 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    cos, sin = np.cos(theta), np.sin(theta)
    half = head_dim // 2
    hf = np.concatenate([x[:half] * cos - x[half:] * sin, x[half:] * cos + x[:half] * sin])
    order = rotary_interleave_order(1, head_dim)
    pairs = x[order].reshape(-1, 2)
    llama = np.stack([pairs[:, 0] * cos - pairs[:, 1] * sin, pairs[:, 0] * sin + pairs[:, 1] * cos], axis=1).reshape(-1)
    np.testing.assert_allclose(llama, hf[order], atol=1e-12)


def test_qkv_grouping_order():
    # two heads of size 2, fused per head as [q0 k0 v0 q1 k1 v1] → [q0 q1 k0 k1 v0 v1]
    assert qkv_grouping_order(2, 2).tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]


# ---------------------------------------------------------------------------------- round trip

def test_dense_round_trip_names_shapes_metadata_and_data(stories_dir, exported):
    fields, tensors = read(exported["dense", "f32"])
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expected = {"llama.block_count": 5, "llama.context_length": 512, "llama.embedding_length": 64,
                "llama.feed_forward_length": 172, "llama.attention.head_count": 8, "llama.attention.head_count_kv": 4,
                "llama.attention.key_length": 8, "llama.rope.dimension_count": 8, "llama.vocab_size": 512}
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields["tokenizer.ggml.model"] == "llama"
    assert len(fields["tokenizer.ggml.tokens"]) == 512 and fields["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)

    per_layer = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    names = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{p}.weight" for i in range(5) for p in per_layer}
    assert set(tensors) == names  # tied embeddings: no output.weight
    shapes = {"token_embd.weight": (64, 512), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (64, 32),
              "blk.0.ffn_down.weight": (172, 64), "blk.0.ffn_up.weight": (64, 172), "blk.0.attn_norm.weight": (64,)}
    assert {k: tuple(int(x) for x in tensors[k].shape) for k in shapes} == shapes

    hf = AutoModelForCausalLM.from_pretrained(stories_dir).eval()
    attention = hf.model.layers[3].self_attn
    np.testing.assert_array_equal(f32_data(tensors["token_embd.weight"]), hf.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(f32_data(tensors["blk.3.attn_q.weight"]),
                                  attention.q_proj.weight.detach().numpy()[rotary_interleave_order(8, 8)])
    np.testing.assert_array_equal(f32_data(tensors["blk.3.attn_k.weight"]),
                                  attention.k_proj.weight.detach().numpy()[rotary_interleave_order(4, 8)])
    np.testing.assert_array_equal(f32_data(tensors["blk.3.attn_v.weight"]), attention.v_proj.weight.detach().numpy())
    np.testing.assert_array_equal(f32_data(tensors["blk.3.ffn_down.weight"]), hf.model.layers[3].mlp.down_proj.weight.detach().numpy())


def test_output_types_and_q8_0_fallback(stories_dir, exported, tmp_path):
    _, f16 = read(exported["dense", "f16"])
    assert {t.tensor_type.name for n, t in f16.items() if len(t.shape) == 2} == {"F16"}
    assert {t.tensor_type.name for n, t in f16.items() if len(t.shape) == 1} == {"F32"}
    fields, q8 = read(exported["dense", "q8_0"])
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    # rows of 172 values do not split into q8_0 blocks of 32: those matrices are f16, the others q8_0
    assert {n for n, t in q8.items() if t.tensor_type.name == "F16"} == {f"blk.{i}.ffn_down.weight" for i in range(5)}
    assert q8["blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
    _, f32 = read(exported["dense", "f32"])
    reference = f32_data(f32["blk.0.ffn_gate.weight"])
    error = np.abs(f32_data(q8["blk.0.ffn_gate.weight"]) - reference).max()
    assert 0 < error <= np.abs(reference).max() / 127 * 0.51  # half a q8_0 step of the largest block
    export_gguf(stories_dir, tmp_path / "bf16.gguf", "bf16")
    fields, bf16 = read(tmp_path / "bf16.gguf")
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    assert bf16["blk.0.attn_q.weight"].tensor_type.name == "BF16"


def test_depth_pruned_stays_llama_with_fewer_blocks(models, exported):
    fields, tensors = read(exported["depth", "f16"])
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 4
    assert {n.split(".")[1] for n in tensors if n.startswith("blk.")} == {"0", "1", "2", "3"}
    dense = AutoModelForCausalLM.from_pretrained(models["dense"])
    _, f32 = read(exported["depth", "f32"])
    # HF layer 3 became block 2
    np.testing.assert_array_equal(f32_data(f32["blk.2.ffn_up.weight"]), dense.model.layers[3].mlp.up_proj.weight.detach().numpy())


def test_heterogeneous_round_trip_through_deci(models, exported):
    config = json.loads((models["heterogeneous"] / "config.json").read_text())
    assert config["model_type"] == "pruning_heterogeneous"
    fields, tensors = read(exported["heterogeneous", "f32"])
    assert fields["general.architecture"] == "deci"
    # HF layers: 0 dense, 1 four heads, 2 no FFN, 3 nothing (left out), 4 no attention
    assert fields["deci.block_count"] == 4
    assert fields["deci.attention.head_count"] == [8, 4, 8, 0]
    assert fields["deci.attention.head_count_kv"] == [4, 2, 4, 0]
    assert fields["deci.feed_forward_length"] == [172, 172, ZERO_FFN_WIDTH, 172]
    assert fields["deci.attention.key_length"] == 8 and fields["deci.rope.dimension_count"] == 8
    assert not any(n.startswith("blk.3.attn") for n in tensors)  # attention-free: no norm, no projections
    assert tuple(int(x) for x in tensors["blk.1.attn_q.weight"].shape) == (64, 32)
    assert tuple(int(x) for x in tensors["blk.1.attn_k.weight"].shape) == (64, 16)
    assert tuple(int(x) for x in tensors["blk.2.ffn_down.weight"].shape) == (ZERO_FFN_WIDTH, 64)
    for part in ("ffn_gate", "ffn_up", "ffn_down"):
        assert not f32_data(tensors[f"blk.2.{part}.weight"]).any()

    model, _ = pruning.load_model(models["heterogeneous"])
    sliced = model.model.layers[1].self_attn
    np.testing.assert_array_equal(f32_data(tensors["blk.1.attn_q.weight"]),
                                  sliced.q_proj.weight.detach().numpy()[rotary_interleave_order(4, 8)])
    np.testing.assert_array_equal(f32_data(tensors["blk.1.attn_output.weight"]), sliced.o_proj.weight.detach().numpy())
    np.testing.assert_array_equal(f32_data(tensors["blk.3.ffn_up.weight"]),
                                  model.model.layers[4].mlp.up_proj.weight.detach().numpy())


def test_attention_free_first_layer_gets_zero_linear_attention(exported):
    fields, tensors = read(exported["attention_free_first", "f32"])
    assert fields["deci.attention.head_count"] == [8, 8, 8, 8, 8]
    assert fields["deci.attention.head_count_kv"] == [0, 4, 4, 4, 4]
    assert {n for n in tensors if n.startswith("blk.0.attn")} == {"blk.0.attn_norm.weight", "blk.0.attn_output.weight"}
    assert not f32_data(tensors["blk.0.attn_output.weight"]).any()


def _byte_level_tokenizer(folder, digits: bool):
    """A small byte-level BPE tokenizer (GPT-2 style, or SmolLM style with single digits) trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if digits else byte_level
    tokenizer.decoder = decoders.ByteLevel()
    text = [PROMPT, "In 1984 there were 3 cats and 12 dogs.", "The sun is big and warm. Tom said: 'yes!'"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def byte_level_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    dirs = {}
    for name, digits in (("gpt-2", False), ("smollm", True)):
        folder = root / name
        tokenizer = _byte_level_tokenizer(folder, digits)
        config = tiny_config("llama")
        config.vocab_size, config.tie_word_embeddings = len(tokenizer), True
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        export_gguf(folder, root / f"{name}.gguf", "f16")  # beside the model: an output never lies inside an input
        dirs[name] = folder
    return dirs


def test_byte_level_bpe_vocabulary(byte_level_models):
    for pre, folder in byte_level_models.items():
        fields, _ = read(folder.with_suffix(".gguf"))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == pre
        assert fields["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        assert fields["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3
        merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
        assert fields["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
        assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    with pytest.raises(ExportError, match="pre-tokenizer"):
        bpe_pre_tokenizer({"pre_tokenizer": {"type": "Whitespace"}})


# ------------------------------------------------------------------------------------- bad input

@pytest.mark.slow
def test_bad_inputs_fail_before_any_file(stories_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match="unknown outtype 'q3_x'"):
        export_gguf(stories_dir, out / "a.gguf", "q3_x")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(stories_dir / name, no_weights / name)
    with pytest.raises(ExportError, match="no model weights"):
        export_gguf(no_weights, out / "b.gguf", "f16")
    opt = tmp_path / "opt"
    AutoModelForCausalLM.from_config(tiny_config("opt")).save_pretrained(opt)
    with pytest.raises(ExportError, match="architecture 'opt' cannot be exported.*llama"):
        export_gguf(opt, out / "c.gguf", "f16")
    untied_gemma = tmp_path / "gemma"
    AutoModelForCausalLM.from_config(tiny_config("gemma")).save_pretrained(untied_gemma)
    shutil.copy(stories_dir / "tokenizer.json", untied_gemma)
    with pytest.raises(ExportError, match="untied lm_head"):
        export_gguf(untied_gemma, out / "d.gguf", "f16")
    assert list(out.iterdir()) == []

    result = run_cli("convert", "--model", no_weights, "--outtype", "f16", "--output", out / "e.gguf")
    assert result.returncode == 2 and "needs config.json and weights" in result.stderr
    result = run_cli("convert", "--model", stories_dir, "--outtype", "q9_k", "--output", out / "f.gguf")
    assert result.returncode == 2 and "unknown outtype 'q9_k'" in result.stderr
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_text("hello")
    result = run_cli("gguf-eval", "--gguf", not_gguf, "--model", stories_dir, "--seqlen", 64, "--output", out / "g.json")
    assert result.returncode == 2 and "not a GGUF file" in result.stderr
    assert list(out.iterdir()) == []


def test_malformed_heterogeneous_record_is_refused_like_on_load(models, tmp_path):
    """The export reads layer shapes through the format module: the same validation as loading."""
    broken = tmp_path / "broken"
    shutil.copytree(models["heterogeneous"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["pruning_layer_structure"][1]["num_key_value_heads"] = 3  # 4 query heads do not split into 3 groups
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"pruning_layer_structure\[1\].*does not fit"):
        export_gguf(broken, tmp_path / "out.gguf", "f16")
    with pytest.raises(ValueError, match=r"pruning_layer_structure\[1\].*does not fit"):
        pruning.load_model(broken)
    assert not (tmp_path / "out.gguf").exists()


# ----------------------------------------------------------------------------- llama.cpp agreement

def _llama_logits(llama_cpp, path, ids):
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_batch=128, n_ubatch=128, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])
    finally:
        llm.close()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox"])
def test_family_logits_match_transformers(llama_cpp, family, stories_dir, stories_tokenizer, tmp_path):
    folder = tmp_path / "model"
    config = tiny_config(family)
    config.tie_word_embeddings = family == "gemma"  # llama.cpp's gemma always ties
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    stories_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) > config.vocab_size:  # transformers 5 gives qwen2 dirs Qwen2's extra <|endoftext|>
        model.resize_token_embeddings(len(tokenizer))
        model.save_pretrained(folder)
    report = export_gguf(folder, tmp_path / "model.gguf", "f32")
    assert report["arch"] == {"mistral": "llama", "gpt_neox": "gptneox"}.get(family, family)
    ids = stories_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_logits(llama_cpp, tmp_path / "model.gguf", ids)
    assert np.abs(got - reference).max() < 2e-3 * np.abs(reference).max()


def test_heterogeneous_logits_match_transformers(llama_cpp, models, exported, stories_tokenizer):
    ids = stories_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    for name in ("heterogeneous", "attention_free_first"):
        model, _ = pruning.load_model(models[name])
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        got = _llama_logits(llama_cpp, exported[name, "f32"], ids)
        assert np.abs(got - reference).max() < 2e-3 * np.abs(reference).max(), name


@pytest.mark.slow
def test_heterogeneous_qwen2_with_biases_through_deci(llama_cpp, stories_tokenizer, tmp_path):
    """deci reads optional q/k/v biases; they are reordered for its rope like the weights."""
    config = tiny_config("qwen2")
    config.vocab_size = 513  # transformers 5 gives this tokenizer Qwen2's extra <|endoftext|> in a qwen2 dir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = pruning.get_adapter(model)
    structure.slice_heads(model, adapter, 0, [0, 1])
    structure.remove_feed_forward(model, adapter, 0)
    structure.remove_attention(model, adapter, 1)
    pruning.save_model(model, stories_tokenizer, tmp_path / "model")
    report = export_gguf(tmp_path / "model", tmp_path / "model.gguf", "f32")
    assert report["arch"] == "deci" and report["zero_ffn_layers"] == [0]
    ids = stories_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_logits(llama_cpp, tmp_path / "model.gguf", ids)
    assert np.abs(got - reference).max() < 2e-3 * np.abs(reference).max()


@pytest.fixture(scope="module")
def agreement(llama_cpp, models, exported, stories_text):
    from pruning.evaluation.llamacpp import evaluate_gguf

    return {(name, outtype): evaluate_gguf(exported[name, outtype], models[name], dataset=str(stories_text["evaluation"]),
                                           seqlen=128, max_windows=8, generate_tokens=8, threads=1)
            for name in ("dense", "depth", "heterogeneous") for outtype in ("f16", "q8_0")}


@pytest.mark.parametrize("name", ["dense", "depth", "heterogeneous"])
@pytest.mark.slow
def test_llama_cpp_perplexity_agrees_with_transformers(agreement, name):
    f16, q8 = agreement[name, "f16"], agreement[name, "q8_0"]
    assert f16["windows"] == 8 and f16["scored_tokens"] == 8 * 127
    assert f16["reference"]["ppl"] == q8["reference"]["ppl"]  # one HF number for both files
    assert abs(f16["relative_difference"]) < 0.01
    assert abs(q8["relative_difference"]) < 0.03
    assert len(f16["generation"]["hf"]) == 8 and f16["generation"]["hf"] == f16["generation"]["gguf"]
    assert f16["tokenizer_agreement"]["identical"]
    assert f16["gguf"]["bytes"] > q8["gguf"]["bytes"] > 0 and f16["load_seconds"] > 0


@pytest.mark.slow
def test_pruning_shows_in_llama_cpp_perplexity(agreement):
    """The exported files keep what pruning did: both pruned models are worse than the dense one."""
    dense = agreement["dense", "f16"]["ppl"]
    assert agreement["depth", "f16"]["ppl"] > dense and agreement["heterogeneous", "f16"]["ppl"] > dense


@pytest.mark.slow
def test_byte_level_tokenizers_match_in_llama_cpp(llama_cpp, byte_level_models):
    text = PROMPT + " In 2024, 17 of the 305 cats said: 'no way!'\n\nThe end."
    for folder in byte_level_models.values():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        llm = llama_cpp.Llama(str(folder.with_suffix(".gguf")), vocab_only=True, verbose=False)
        try:
            assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text, add_special_tokens=False)["input_ids"]
        finally:
            llm.close()


@pytest.mark.slow
def test_cli_k_quant_and_gguf_eval(llama_cpp, stories_dir, stories_text, tmp_path):
    gguf_file, metrics = tmp_path / "stories-q4_k_m.gguf", tmp_path / "gguf-q4_k_m.json"
    result = run_cli("convert", "--model", stories_dir, "--outtype", "q4_k_m", "--output", gguf_file, "--threads", 2)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stories-q4_k_m.gguf"]  # no intermediate left behind
    result = run_cli("gguf-eval", "--gguf", gguf_file, "--model", stories_dir, "--seqlen", 128, "--max-windows", 6,
                     "--dataset", stories_text["evaluation"], "--threads", 1, "--output", metrics)
    assert result.returncode == 0, result.stderr
    record = json.loads(metrics.read_text())
    assert record["gguf"]["file_type"] == "MOSTLY_Q4_K_M" and record["gguf"]["arch"] == "llama"
    assert record["gguf"]["bytes"] == gguf_file.stat().st_size
    assert (record["seqlen"], record["windows"], record["scored_tokens"]) == (128, 6, 6 * 127)
    assert record["dataset"] == str(stories_text["evaluation"]) and record["tokenizer"] == str(stories_dir)
    # 4-bit weights cost some perplexity on this tiny model, but not a broken model's worth
    assert 0 < record["relative_difference"] < 0.25
    for key in ("load_seconds", "eval_seconds", "backend", "versions", "git_commit", "generation"):
        assert key in record


# ------------------------------------------------------------------------- Gemma-2 / Gemma-3 (sliding window)

def _gemma_dir(family, folder, stories_tokenizer, layers, drop=()):
    """A tiny random `family` model with a sliding window shorter than PROMPT, depth-pruned by `drop`."""
    config = tiny_config(family)
    config.num_hidden_layers, config.sliding_window, config.tie_word_embeddings = layers, 4, True
    config.layer_types = [("sliding_attention" if (i + 1) % (2 if family == "gemma2" else 3) else "full_attention")
                          for i in range(layers)]
    if family == "gemma3_text":  # as Gemma-3 4B and up: linear rope scaling on the full-attention layers only
        config.rope_parameters = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                  "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    for module in model.modules():  # random norm weights, so that a missing (1 + w) or a skipped norm shows
        if type(module).__name__.endswith("RMSNorm"):
            module.weight.data.normal_(0, 0.3)
    if drop:
        structure.remove_layers(model, pruning.get_adapter(model), drop)
    pruning.save_model(model, stories_tokenizer, folder)
    return model


def _nll_ppl(logits, ids):
    logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64)[:-1], -1)
    return float(torch.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))


@pytest.mark.parametrize("family, layers, drop, period", [
    ("gemma3_text", 6, (), 3), ("gemma3_text", 6, (0, 4), 2), ("gemma3_text", 6, (2, 5), 0), ("gemma2", 4, (), None)])
@pytest.mark.slow
def test_gemma_sliding_window_logits_match_transformers(llama_cpp, family, layers, drop, period, stories_tokenizer,
                                                         tmp_path):
    """f16 export of Gemma-2/3 (and of depth-pruned Gemma-3, whose layer types then follow another period)
    agrees with transformers in llama.cpp over a prompt longer than the sliding window."""
    model = _gemma_dir(family, tmp_path / "model", stories_tokenizer, layers, drop)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == layers - len(drop) == len(saved["layer_types"])
    report = export_gguf(tmp_path / "model", tmp_path / "model.gguf", "f16")
    assert report["arch"] == {"gemma2": "gemma2", "gemma3_text": "gemma3"}[family]
    fields = gguf.GGUFReader(tmp_path / "model.gguf").fields
    arch = report["arch"]
    assert fields[f"{arch}.attention.sliding_window"].contents() == 4
    if period is not None:
        assert fields[f"{arch}.attention.sliding_window_pattern"].contents() == period
    ids = stories_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 4
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_logits(llama_cpp, tmp_path / "model.gguf", ids)
    assert np.abs(got - reference).max() < 1e-2 * np.abs(reference).max()
    assert abs(_nll_ppl(got, ids) / _nll_ppl(reference, ids) - 1) < 0.01


def test_gemma_layer_types_llama_cpp_cannot_express_are_refused(stories_tokenizer, tmp_path):
    _gemma_dir("gemma3_text", tmp_path / "g3", stories_tokenizer, 6, drop=(0,))  # S S F S S F -> S F S S F
    with pytest.raises(ExportError, match="no sliding-window period"):
        export_gguf(tmp_path / "g3", tmp_path / "g3.gguf", "f16")
    _gemma_dir("gemma2", tmp_path / "g2", stories_tokenizer, 4, drop=(0,))  # S F S F -> F S F
    with pytest.raises(ExportError, match="not alternating"):
        export_gguf(tmp_path / "g2", tmp_path / "g2.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf*"))
