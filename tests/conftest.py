"""Shared fixtures: the real offline copies in ../shared, and tiny random models of every family."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PRUNING_SHARED_DIR", REPO.parent / "shared")).resolve()
DATA_DIR = SHARED / "data"
STORIES = SHARED / "models" / "stories260K"
# A two-method workflow config on stories260K with a tiny protocol (copy it before changing it).
TINY_WORKFLOW_CONFIG = {
    "models": {"stories260K": str(STORIES)},
    "methods": {"magnitude": {"method": "magnitude", "ratios": {"sparsity": [0.5], "nm": ["2:4"]}},
                "wanda": {"method": "wanda", "ratios": {"sparsity": [0.5], "nm": ["2:4"]}}},
    "protocol": "tiny",
    "protocols": {"tiny": {"calibration": {"source": "c4", "nsamples": 8, "seqlen": 64},
                           "evaluation": {"dataset": "wikitext2", "seqlen": 128, "max_windows": 8}}},
    "data_dir": str(DATA_DIR),
}

# Tests and CI read data from the local copies, never from the hub.
os.environ.setdefault("PRUNING_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def starts_snakemake(args) -> bool:
    """Whether a subprocess command line runs Snakemake (`snakemake ...`, `python -m snakemake ...`)."""
    words = shlex.split(args) if isinstance(args, str) else [str(word) for word in args]
    return any(Path(word).name == "snakemake" for word in words[:3])


@pytest.fixture(autouse=True)
def snakemake_only_in_slow_tests(request, monkeypatch):
    """The quick loop (`pytest -m "not slow"`) stays quick: a test not marked slow that starts Snakemake fails."""
    if request.node.get_closest_marker("slow"):
        return

    class Guarded(subprocess.Popen):
        def __init__(self, args, *rest, **options):
            if starts_snakemake(args):
                pytest.fail(f"{request.node.nodeid} runs Snakemake: mark it @pytest.mark.slow", pytrace=False)
            super().__init__(args, *rest, **options)
    monkeypatch.setattr(subprocess, "Popen", Guarded)


TINY_VOCAB = 512  # stories260K's tokenizer, so tiny models can read real text


def tiny_config(model_type: str):
    """A 2-layer config of `model_type` small enough to build in milliseconds."""
    from transformers import AutoConfig

    common = dict(vocab_size=TINY_VOCAB, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=256, tie_word_embeddings=False)
    per_type = {
        "llama": dict(num_key_value_heads=2),
        "mistral": dict(num_key_value_heads=2, sliding_window=None),
        "qwen2": dict(num_key_value_heads=2),
        "qwen3": dict(num_key_value_heads=2, head_dim=16),
        "gemma": dict(num_key_value_heads=2, head_dim=16),
        "gemma2": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
        "gemma3_text": dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
        "phi3": dict(num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "opt": dict(ffn_dim=96, word_embed_proj_dim=64, enable_bias=True),
        "gpt_neox": dict(rotary_pct=0.25, bos_token_id=1, eos_token_id=2),
        "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256, bos_token_id=1, eos_token_id=2),
    }
    config = AutoConfig.for_model(model_type, **common, **per_type[model_type])
    if model_type == "opt":
        config.ffn_dim = 96
    return config


TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "opt", "gpt_neox", "gpt2")


@torch.no_grad()
def assert_cached_generation_is_greedy(model, ids, new_tokens: int) -> None:
    """Greedy generation with a KV cache equals greedy decoding that recomputes the whole prefix each step
    (a pruned layer that mishandles the cache shows up here)."""
    generated = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    manual = ids
    for _ in range(new_tokens):
        manual = torch.cat([manual, model(input_ids=manual, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, manual)


def build_tiny_model(model_type: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return model.eval()


def stories_and_windows(stories_dir, calibration_text, nsamples: int, seqlen: int = 128):
    """stories260K and `nsamples` calibration windows of `seqlen` tokens cut from the calibration text."""
    import pruning
    from pruning.core.data import calibration_windows

    model, tokenizer = pruning.load_model(stories_dir)
    return model, calibration_windows(tokenizer, str(calibration_text), nsamples, seqlen, seed=0)[0]


def prune_copy(dense, calibration, method: str, seed: int = 0, **arguments):
    """`method` (its model checks first) on a deep copy of `dense`, calibrated on the token windows `calibration`
    in batches of 4, as the library's engine runs it: the copy, its targeted linears by name and the report."""
    import copy

    import pruning
    from pruning.methods import PruneContext

    model = copy.deepcopy(dense)
    adapter = pruning.get_adapter(model)
    context = PruneContext(model=model, tokenizer=None, adapter=adapter, device=torch.device("cpu"),
                           calibration=lambda: (calibration, {}), batch_size=4, progress=False, seed=seed)
    method = pruning.build_method(method, **arguments)
    method.check_model(context)
    report = method.prune(context)
    linears = {name: module for index in range(adapter.num_layers(model))
               for name, module in adapter.linear_targets(model, index).items()}
    return model, linears, report


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.fail(f"stories260K not found at {STORIES}; set PRUNING_SHARED_DIR to the shared/ folder")
    return STORIES


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The offline data copies (for tests in subfolders, whose `conftest` import finds their own conftest)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def stories_tokenizer(stories_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stories_dir)


@pytest.fixture(scope="session")
def stories_text(stories_dir, tmp_path_factory) -> dict[str, Path]:
    """In-domain text for stories260K: its own sampled generations, separate sets for calibration and
    evaluation (different seeds and prompts), written once per session."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(stories_dir)
    folder = tmp_path_factory.mktemp("stories_text")
    files = {}
    prompts = {"calibration": "Once upon a time", "evaluation": "One day"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 200 steps of a 260K-parameter model: a second thread only waits (seconds -> minutes)
    for offset, (name, start) in enumerate(prompts.items()):
        torch.manual_seed(1234 + offset)
        ids = tokenizer(start, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=200,
                                 num_return_sequences=16, pad_token_id=0)
        docs = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
        files[name] = folder / f"{name}.txt"
        files[name].write_text("\n\n".join(docs) + "\n")
    torch.set_num_threads(threads)
    return files


@pytest.fixture(scope="module")
def calib_ids(stories_text, stories_tokenizer):
    """Eight C4-style calibration windows of 64 tokens for stories260K."""
    from pruning.core.data import calibration_windows

    ids, _ = calibration_windows(stories_tokenizer, str(stories_text["calibration"]), 8, 64, seed=0)
    return ids


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if calibration or evaluation starts (for checks that must come before any work)."""
    import pruning.api
    import pruning.core.data

    def refuse(*_args, **_kwargs):
        raise AssertionError("work started before the check")
    monkeypatch.setattr(pruning.core.data, "calibration_windows", refuse)  # what CalibrationCache calls
    monkeypatch.setattr(pruning.api, "perplexity", refuse)
