"""Sparse checkpoints (pruning/core/sparse_formats.py) on stories260K: Wanda 50 % and 2:4 saved in the compressed-tensors
layouts load back bit for bit, are as small as the layout says, convert to the same GGUF, and a layout that cannot
fit is refused before any work."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import pruning
from pruning import cli
from pruning.core import sparse_formats as compressed
from pruning.api import evaluate_perplexity
from pruning.export import export_gguf
from pruning.core.modeling import save_model

from conftest import DATA_DIR


DATA = str(DATA_DIR)


def prune_args(stories_dir, out, ratio, save_format):
    return ["prune", "--model", str(stories_dir), "--method", "wanda", *ratio, "--output-dir", str(out),
            "--calib", "c4", "--data-dir", DATA, "--nsamples", "8", "--seqlen", "64", "--seed", "1",
            "--quiet", "--device", "cpu", "--save-format", save_format]


@pytest.fixture(scope="module")
def saved(stories_dir, tmp_path_factory):
    """{(pattern, format): directory}: the same prune (same seed, same windows) saved dense and compressed."""
    root = tmp_path_factory.mktemp("sparse_save")
    runs = {("50%", "dense"): ["--sparsity", "0.5"], ("50%", "sparse-bitmask"): ["--sparsity", "0.5"],
            ("2:4", "dense"): ["--nm", "2:4"], ("2:4", "auto"): ["--nm", "2:4"]}
    dirs = {}
    for (pattern, save_format), ratio in runs.items():
        out = root / f"{pattern.replace(':', '-').replace('%', '')}-{save_format}"
        assert cli.main(prune_args(stories_dir, out, ratio, save_format)) == 0
        dirs[pattern, save_format] = out
    return dirs


def data_bytes(directory) -> int:
    """Bytes of the tensors themselves (file size less the 8-byte length and the JSON header)."""
    total = 0
    for file in directory.glob("*.safetensors"):
        header = int.from_bytes(file.read_bytes()[:8], "little")
        total += file.stat().st_size - 8 - header
    return total


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view({4: torch.int32, 2: torch.int16}[tensor.element_size()])


def predicted_bytes(state_dict: dict, linears: list[str], save_format: str) -> int:
    """What the layout stores, from its definition: non-zero values, one bit per weight (rows padded to bytes),
    the shape (2 int64) and, for the bitmask layout, one int64 row offset per row; everything else dense."""
    total = 0
    for name, tensor in state_dict.items():
        module = name.removesuffix(".weight")
        if module not in linears:
            total += tensor.numel() * tensor.element_size()
            continue
        rows, cols = tensor.shape
        kept = int((bits(tensor) != 0).sum()) if save_format == "sparse-bitmask" else rows * cols // 2
        total += kept * tensor.element_size() + rows * math.ceil(cols / 8) + 16
        total += rows * 8 if save_format == "sparse-bitmask" else 0
    return total


@pytest.mark.parametrize("pattern, save_format", [("50%", "sparse-bitmask"), ("2:4", "sparse-24-bitmask")])
def test_compressed_checkpoint_loads_back_bit_identical(saved, pattern, save_format):
    dense_dir, sparse_dir = saved[pattern, "dense"], saved[pattern, "auto" if pattern == "2:4" else save_format]
    report = json.loads((sparse_dir / "prune.json").read_text())
    record = report[compressed.CHECKPOINT]
    assert record["format"] == save_format  # auto chose the 2:4 layout for the 2:4 model
    assert record["safetensors_bytes"] == sum(f.stat().st_size for f in sparse_dir.glob("*.safetensors"))
    config = json.loads((sparse_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["sparsity_config"]["format"] == save_format
    assert len(config["sparsity_config"]["targets"]) == record["compressed_linears"] == 5 * 7
    with safe_open(next(sparse_dir.glob("*.safetensors")), framework="pt") as handle:
        names = set(handle.keys())
    assert "model.layers.0.mlp.down_proj.bitmask" in names and "model.layers.0.mlp.down_proj.weight" not in names

    dense, _ = pruning.load_model(dense_dir)
    reloaded, _ = pruning.load_model(sparse_dir)
    want, got = dense.state_dict(), reloaded.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].dtype == got[name].dtype and torch.equal(bits(want[name]), bits(got[name])), name
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(dense(ids).logits, reloaded(ids).logits)
    assert 0.49 < config["sparsity_config"]["global_sparsity"] <= 0.5


def test_size_on_disk_is_what_the_layout_promises(saved, tmp_path):
    """fp32 and bf16: the tensors take exactly the predicted bytes; the whole model shrinks by the margin
    the layout gives at 50 % (values halved, 1/32 or 1/16 of a dense weight for the bitmask)."""
    linears = json.loads((saved["50%", "sparse-bitmask"] / "config.json").read_text())[
        "quantization_config"]["sparsity_config"]["targets"]
    ratios = {}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = pruning.load_model(saved["50%", "dense"], dtype=dtype)
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
        sizes = {}
        for save_format in ("dense", "sparse-bitmask"):
            out = tmp_path / f"{dtype}-{save_format}"
            save_model(model, tokenizer, out, report={}, save_format=save_format)
            expected = predicted_bytes(state, linears if save_format != "dense" else [], save_format)
            assert data_bytes(out) == expected
            sizes[save_format] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        ratios[dtype] = sizes["sparse-bitmask"] / sizes["dense"]
        linear_share = sum(state[f"{n}.weight"].numel() for n in linears) / sum(t.numel() for t in state.values())
        width = torch.finfo(getattr(torch, dtype)).bits // 8
        floor = 1 - linear_share * (0.5 - 1 / (8 * width))  # values and bitmask only: no row offsets, no headers
        assert floor < ratios[dtype] < floor + 0.08, (dtype, ratios[dtype], floor)  # offsets: 8 B a row of 64-172
    assert ratios["float32"] < 0.65 and ratios["bfloat16"] < 0.72, ratios
    print(f"stories260K Wanda 50 %, sparse-bitmask / dense on disk: {ratios}")


def test_auto_keeps_unpruned_models_dense_and_picks_the_bitmask_for_unstructured(stories_dir, saved):
    dense_model, _ = pruning.load_model(stories_dir)
    assert compressed.plan(dense_model, "auto")[0] == "dense"
    assert compressed.plan(dense_model, "sparse-bitmask")[0] == "dense"  # nothing would shrink
    pruned, _ = pruning.load_model(saved["50%", "dense"])
    assert compressed.plan(pruned, "auto")[0] == "sparse-bitmask"
    with pytest.raises(compressed.SaveFormatError, match="none of the 35 linears is 2:4"):
        compressed.plan(pruned, "sparse-24-bitmask")


@pytest.mark.parametrize("ratio, message", [(["--sparsity", "0.5"], "stores 2:4 sparsity only"),
                                            (["--nm", "4:8"], "stores 2:4 sparsity only")])
def test_sparse_24_on_a_non_24_prune_is_refused_before_work(stories_dir, tmp_path, capsys, no_work, ratio, message):
    out = tmp_path / "out"
    assert cli.main(prune_args(stories_dir, out, ratio, "sparse-24-bitmask")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_eval_and_gguf_read_the_compressed_checkpoint_as_dense(saved, tmp_path):
    dense_dir, sparse_dir = saved["50%", "dense"], saved["50%", "sparse-bitmask"]
    settings = dict(dataset="wikitext2", seqlen=64, max_windows=4, device="cpu", data_dir_path=DATA)
    assert evaluate_perplexity(str(sparse_dir), **settings)["ppl"] == evaluate_perplexity(str(dense_dir), **settings)["ppl"]
    from gguf import GGUFReader

    tensors = {}
    for name, directory in (("dense", dense_dir), ("sparse", sparse_dir)):
        export_gguf(directory, tmp_path / f"{name}.gguf", "f32")
        tensors[name] = {t.name: np.array(t.data) for t in GGUFReader(tmp_path / f"{name}.gguf").tensors}
    assert tensors["dense"].keys() == tensors["sparse"].keys()
    assert all(np.array_equal(tensors["dense"][k].view(np.uint8), tensors["sparse"][k].view(np.uint8))
               for k in tensors["dense"])


def test_a_layout_we_do_not_read_is_refused_in_one_line(saved, tmp_path):
    copy = tmp_path / "marlin"
    shutil.copytree(saved["2:4", "auto"], copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"]["sparsity_config"]["format"] = "marlin-24"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(compressed.SaveFormatError, match="marlin-24"):
        pruning.load_model(copy)
