"""PersLM's documented interface, run as its document writes it (model swapped for stories260K): the flags with
their defaults, `distillation`, `all` in PersLM's order, the prune → quantize sequence, and the `Pruner` chain
(PersLM's ModelPruner) giving the same model as the CLI. Outputs reload; bad input exits 2 in one line."""
import json
from pathlib import Path

import gguf
import pytest
import torch

import pruning
from pruning.cli import main as cli_main
from pruning.commands.optimize import QUANTIZATION_TYPES
from pruning.core.token_windows import windows_nll
from pruning.training.distillation import training_windows, zero_masks
from pruning.core.modeling import load_model, parameter_counts

QUICK = ["--quiet", "--device", "cpu"]
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory: PersLM's default output is models/pruned/NAME-METHOD_pruned under the cwd."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Small slices of ../shared text, so that each distillation epoch is one step: PersLM's your_dataset.jsonl
    (C4 train documents), educational_content.txt (WikiText-2 validation) and, for evaluation, the start of the
    WikiText-2 test split."""
    folder = tmp_path_factory.mktemp("perslm")
    c4 = (DATA / "c4" / "c4-train.00000-of-01024.first1000.jsonl").read_text().splitlines()
    docs, chars = [], 0
    while chars < 2500:
        docs.append(c4[len(docs)])
        chars += len(json.loads(docs[-1])["text"])
    (folder / "your_dataset.jsonl").write_text("\n".join(docs) + "\n")
    valid = (DATA / "wikitext-2-raw-v1" / "wiki.valid.raw").read_text()
    (folder / "educational_content.txt").write_text(valid[:2500])
    (folder / "evaluation.txt").write_text((DATA / "wikitext-2-raw-v1" / "wiki.test.raw").read_text()[:20000])
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def small_text(texts):
    return texts["your_dataset"]


@pytest.fixture(scope="module")
def quick_eval(texts):
    """stories260K has 512 positions; a slice of the test split keeps evaluation fast."""
    return ["--dataset", str(texts["evaluation"]), "--eval-seqlen", "128", "--max-windows", "4"]


def prune_cli(*argv):
    return cli_main(["prune", *argv, *QUICK])


def report_of(path):
    return json.loads((Path(path) / "prune.json").read_text())


@torch.no_grad()
def logits(model):
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(7))
    return model(input_ids=ids, use_cache=False).logits


def assert_reloads(path):
    """The directory loads and holds what prune.json says."""
    model, _ = load_model(path)
    assert parameter_counts(model) == report_of(path)["parameters"]["after"]
    return model


def sparsity(model):
    """Share of zeros over the decoder layers' linear weights."""
    adapter = pruning.get_adapter(model)
    total = sum(m.weight.numel() for i in range(adapter.num_layers(model)) for m in adapter.linear_targets(model, i).values())
    return sum(int(mask.sum()) for mask in zero_masks(model, adapter).values()) / total


# ------------------------------------------------------------------------------------- defaults

@pytest.mark.parametrize("method,check", [
    ("heads", lambda r: r["options"]["fraction"] == 0.1),
    ("layers", lambda r: r["options"]["fraction"] == 0.1 and r["result"]["removed_layers"] == [2]),
    ("all", lambda r: [(s["method"], s.get("fraction", s.get("target", {}).get("sparsity")))
                       for s in r["options"]["stages"]] == [("heads", 0.1), ("layers", 0.1), ("magnitude", 0.3)]),
])
def test_documented_defaults_and_output_dir(stories_dir, workdir, method, check):
    assert prune_cli("--model", str(stories_dir), "--method", method) == 0
    out = workdir / "models" / "pruned" / f"stories260K-{method}_pruned"
    report = report_of(out)
    assert report["method"] == method and check(report)
    assert_reloads(out)


def test_prune_then_quantize_as_written(stories_dir, workdir, capsys):
    """PersLM: `prune --method magnitude --sparsity 0.3`, then `optimize --model models/pruned/NAME-magnitude_pruned
    --quantization 4bit` (and 8bit)."""
    assert prune_cli("--model", str(stories_dir), "--method", "magnitude", "--sparsity", "0.3") == 0
    pruned = Path("models/pruned/stories260K-magnitude_pruned")
    assert sparsity(assert_reloads(pruned)) == pytest.approx(0.3, abs=0.002)
    assert json.loads(capsys.readouterr().out)["output_dir"] == str(pruned)
    bits = ["8bit"]
    try:
        import llama_cpp  # noqa: F401  (4bit is llama.cpp's q4_k_m)
        bits.append("4bit")
    except ImportError:
        pass
    for quantization in bits:
        assert cli_main(["optimize", "--model", str(pruned), "--quantization", quantization]) == 0
        path = pruned.with_name(f"{pruned.name}-{QUANTIZATION_TYPES[quantization]}.gguf")
        assert json.loads(capsys.readouterr().out)["output"] == str(path)
        reader = gguf.GGUFReader(path)
        types = {t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")}
        assert types == ({"Q8_0"} if quantization == "8bit" else types & {"Q4_K", "Q5_0", "Q5_1", "Q8_0", "Q4_0"}) != set()
        assert int(reader.get_field("general.file_type").parts[-1][0]) == (
            gguf.LlamaFileType.MOSTLY_Q8_0 if quantization == "8bit" else gguf.LlamaFileType.MOSTLY_Q4_K_M)


# ------------------------------------------------------------------------------- usage scenarios

def test_minimal_pruning_scenario(stories_dir, workdir, quick_eval):
    """`--method magnitude --sparsity 0.2 --evaluate`."""
    assert prune_cli("--model", str(stories_dir), "--method", "magnitude", "--sparsity", "0.2", "--evaluate",
                     *quick_eval) == 0
    report = report_of("models/pruned/stories260K-magnitude_pruned")
    assert report["evaluation"]["after"]["ppl"] > report["evaluation"]["before"]["ppl"]
    assert sparsity(assert_reloads("models/pruned/stories260K-magnitude_pruned")) == pytest.approx(0.2, abs=0.002)


@pytest.mark.slow
def test_mobile_friendly_scenario_runs_perslm_order(stories_dir, small_text, workdir, quick_eval):
    """`--method all --head-reduction 0.15 --layer-reduction 0.25 --sparsity 0.5 --training-data F --evaluate`:
    heads → layers → magnitude → distillation (3 epochs, no step cap)."""
    assert prune_cli("--model", str(stories_dir), "--method", "all", "--head-reduction", "0.15", "--layer-reduction",
                     "0.25", "--sparsity", "0.5", "--training-data", str(small_text), "--evaluate", *quick_eval) == 0
    out = workdir / "models/pruned/stories260K-all_pruned"
    report = report_of(out)
    stages = report["result"]["stages"]
    assert [s["stage"] for s in stages] == ["heads", "layers", "magnitude", "distill"]
    distilled = stages[-1]["result"]
    assert report["options"]["distill"]["epochs"] == 3 and report["options"]["distill"]["max_steps"] is None
    assert distilled["epochs_completed"] == 3 and distilled["steps"] == 3 * -(-distilled["training_windows"] // 4)
    model = assert_reloads(out)
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)  # masks survived distillation and saving
    assert report["parameters"]["after"]["total"] < report["parameters"]["before"]["total"]


@pytest.mark.slow
def test_classroom_scenario_distillation(stories_dir, texts, workdir, quick_eval):
    """`--method distillation --sparsity 0.4 --training-data F --distill-epochs 5 --evaluate`: magnitude pruning,
    then distillation from the unpruned model for five passes."""
    assert prune_cli("--model", str(stories_dir), "--method", "distillation", "--sparsity", "0.4", "--training-data",
                     str(texts["educational_content"]), "--distill-epochs", "5", "--evaluate", *quick_eval) == 0
    out = workdir / "models/pruned/stories260K-distill_pruned"
    report = report_of(out)
    assert report["method"] == "distill" and report["options"]["base_method"] == "magnitude"
    assert report["options"]["epochs"] == 5 and report["options"]["learning_rate"] == 5e-5
    distilled = report["result"]["distillation"]
    assert distilled["epochs_completed"] == 5 and distilled["teacher"] == "the model before pruning"
    assert sparsity(assert_reloads(out)) == pytest.approx(0.4, abs=0.01)


# ------------------------------------------------------------------------------------------ Pruner

@pytest.mark.slow
def test_pruner_chain_equals_the_cli(stories_dir, small_text, tmp_path):
    """PersLM's custom workflow with the Pruner: the same steps give the same model as `--method all`."""
    distill = dict(max_steps=2, train_seqlen=64, learning_rate=1e-3)
    pruner = pruning.Pruner(stories_dir, output_dir=tmp_path / "chain", device="cpu", progress=False,
                            eval_seqlen=128, eval_max_windows=4)
    model = pruner.prune_heads(head_reduction=0.15, save_model=False)
    assert model is pruner.model
    pruner.prune_layers(layer_reduction=0.25, save_model=False)
    metrics = pruner.evaluate_pruned_model()
    assert metrics["after_steps"] == ["heads", "layers"] and metrics["ppl"] > 1
    pruner.magnitude_pruning(sparsity=0.5, save_model=True)
    first = report_of(tmp_path / "chain")
    assert [s["method"] for s in first["options"]["steps"]] == ["heads", "layers", "magnitude"]
    pruner.distill(str(small_text), **distill)
    assert pruner.evaluate()["after_steps"] == ["heads", "layers", "magnitude", "distill"]
    pruner.save()

    assert prune_cli("--model", str(stories_dir), "--method", "all", "--head-reduction", "0.15", "--layer-reduction",
                     "0.25", "--sparsity", "0.5", "--training-data", str(small_text), "--learning-rate", "1e-3",
                     "--option", "max_steps=2", "--option", "train_seqlen=64", "--output-dir", str(tmp_path / "cli")) == 0
    chained, cli = assert_reloads(tmp_path / "chain"), assert_reloads(tmp_path / "cli")
    assert torch.equal(logits(chained), logits(cli))
    report = report_of(tmp_path / "chain")
    assert report["method"] == "pruner" and report["evaluation"]["after"]["after_steps"][-1] == "distill"
    assert report["result"]["parameters_removed"] == report_of(tmp_path / "cli")["result"]["parameters_removed"]


@pytest.mark.slow
def test_pruner_distillation_lowers_loss(stories_dir, small_text, tmp_path):
    pruner = pruning.Pruner(str(stories_dir), device="cpu", progress=False)
    windows = training_windows(pruner.tokenizer, str(small_text), 64)

    def loss():
        nll, tokens = windows_nll(pruner.model, windows, batch_size=16)
        return nll / tokens

    pruner.magnitude_pruning(sparsity=0.5)
    before = loss()
    pruner.distill(str(small_text), epochs=4, learning_rate=3e-3, train_seqlen=64, train_batch_size=8)
    result = pruner.steps[-1]["result"]
    assert result["ce_after"] < result["ce_before"] and loss() < before - 0.03
    assert sparsity(pruner.model) == pytest.approx(0.5, abs=0.01)
    pruner.save(tmp_path / "kd")
    assert torch.equal(logits(assert_reloads(tmp_path / "kd")), logits(pruner.model))


# --------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv,message", [
    (["--method", "distillation"], "needs --training-data"),
    (["--method", "distillation", "--training-data", "TRAIN", "--option", "base_method=wanda"], "--method distill"),
    (["--method", "distillation", "--training-data", "wikitext2"], "evaluation split"),
    (["--method", "distillation", "--training-data", "TRAIN", "--evaluate", "--dataset", "TRAIN"], "is the evaluation"),
    (["--method", "distillation", "--training-data", str(DATA / "wikitext-2-raw-v1" / "wiki.test.raw")],
     "is the evaluation"),
    (["--method", "all", "--head-reduction", "1.5"], "head_fraction"),
    (["--method", "distillation", "--training-data", "TRAIN", "--distill-epochs", "0"], "epochs"),
    (["--method", "heads", "--sparsity", "0.3", "--option", "fraction=0.1"], "sparsity"),
])
def test_bad_prune_input_exits_2_in_one_line(stories_dir, small_text, workdir, capsys, argv, message):
    argv = [str(small_text) if a == "TRAIN" else a for a in argv]
    assert prune_cli("--model", str(stories_dir), *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "models").exists()


def test_bad_optimize_and_pruner_input(stories_dir, workdir, capsys):
    assert cli_main(["optimize", "--model", str(stories_dir), "--quantization", "3bit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4bit or 8bit" in err
    foreign = workdir / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a previous result"):
        pruning.Pruner(stories_dir, output_dir=foreign)
    pruner = pruning.Pruner(stories_dir, device="cpu", progress=False)
    with pytest.raises(ValueError, match="no output directory"):
        pruner.save()
    with pytest.raises(ValueError, match="training_data"):
        pruner.distillation(sparsity=0.3)
    assert parameter_counts(pruner.model) == pruner.parameters_before  # nothing pruned by the refused steps
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in workdir.iterdir()) == ["foreign"]
