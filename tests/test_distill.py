"""Distillation after pruning: the student gets better on its training text, and what pruning removed
(layers, heads, masked weights) stays removed."""
import copy
import json

import pytest
import torch

import pruning
from pruning.core import heterogeneous, surgery as structure
from pruning.core.token_windows import windows_nll
from pruning.methods import MethodError, PruneContext
from pruning.training.distillation import DistillSettings, distill_model, training_windows, zero_masks
from pruning.core.modeling import load_model


@torch.no_grad()
def text_loss(model, windows):
    nll, tokens = windows_nll(model, windows, batch_size=8)
    return nll / tokens


@pytest.mark.slow
def test_distillation_lowers_loss_and_keeps_structure_and_masks(stories_dir, stories_text):
    teacher, tokenizer = load_model(stories_dir)
    student = copy.deepcopy(teacher)
    adapter = pruning.get_adapter(student)
    ctx = PruneContext(model=student, tokenizer=tokenizer, adapter=adapter, device=torch.device("cpu"), progress=False)
    pruning.build_method("all", head_fraction=0.25, layer_fraction=0.2, sparsity=0.5,
                         sparsity_method="magnitude").prune(ctx)
    shape = heterogeneous.layer_structure(student, adapter)
    masks = {name: (p == 0).clone() for name, p in student.named_parameters() if (p == 0).any()}
    parameters = structure.numel(student)
    windows = training_windows(tokenizer, str(stories_text["calibration"]), 64)
    before = text_loss(student, windows)

    settings = DistillSettings(training_data=str(stories_text["calibration"]), learning_rate=2e-3, epochs=6, max_steps=30,
                               train_seqlen=64, train_batch_size=8, ce_weight=0.1)
    result = distill_model(student, teacher, adapter, windows, settings, torch.device("cpu"), progress=False)

    assert result["steps"] == 30  # 51 windows / 8 per step = 7 steps an epoch; capped at 30
    assert result["ce_after"] < result["ce_before"]
    after = text_loss(student, windows)  # independent measure on the whole training text
    assert after < before - 0.05, (before, after)
    assert heterogeneous.layer_structure(student, adapter) == shape
    assert structure.numel(student) == parameters
    assert result["masked_modules"] > 0
    for name, mask in masks.items():
        p = dict(student.named_parameters())[name]
        assert torch.equal(p == 0, mask), name  # zeros stay zero, and no new zeros appear


@pytest.mark.slow
def test_distill_method_end_to_end_with_teacher_model(stories_dir, stories_text, tmp_path):
    out = tmp_path / "distilled"
    report = pruning.prune(str(stories_dir), "distill", out, device="cpu", progress=False,
                           base_method="magnitude", sparsity=0.5, teacher_model=str(stories_dir),
                           training_data=str(stories_text["calibration"]), max_steps=8, train_seqlen=64,
                           learning_rate=1e-3)
    result = report["result"]
    assert result["base_method"] == "magnitude" and result["distillation"]["steps"] == 8
    assert result["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["options"]["teacher_model"] == str(stories_dir)
    model, _ = load_model(out)
    targets = zero_masks(model, pruning.get_adapter(model))
    zeros = sum(int(m.sum()) for m in targets.values())
    total = sum(m.numel() for m in targets.values())
    assert zeros / total == pytest.approx(0.5, abs=0.01)  # masks survived training and saving
    assert json.loads((out / "prune.json").read_text())["method"] == "distill"


@pytest.mark.parametrize("arguments,message", [
    ({"training_data": "/nonexistent/train.txt"}, "training_data"),
    ({"training_data": "TRAIN", "teacher_model": "/nonexistent/teacher"}, "teacher_model"),
    ({"training_data": "TRAIN", "epochs": 0}, "epochs"),
    ({"training_data": "TRAIN", "ce_weight": 1.5}, "ce_weight"),
    ({"training_data": "TRAIN", "learning_rate": -1.0}, "learning_rate"),
])
def test_bad_distillation_settings_fail_before_work(stories_text, arguments, message):
    arguments = {k: str(stories_text["calibration"]) if v == "TRAIN" else v for k, v in arguments.items()}
    with pytest.raises(MethodError, match=message):
        pruning.build_method("distill", base_method="layers", fraction=0.2, **arguments)
