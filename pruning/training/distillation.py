"""The distillation loop (PersLM): a student trained towards its teacher on token windows with
(1 − ce_weight) · T² · KL(teacher_T ‖ student_T) + ce_weight · CE, the pruning masks re-applied after every
step. Used by the `distill` and `all` methods and by LoRA recovery's loss measurement."""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..core import zoo
from ..core.options import READS_MODEL, READS_TEXT, MethodError, Option, parse_options

if TYPE_CHECKING:
    import torch
    from torch import nn


def _training_source(source: str) -> str:
    from ..core.data import check_calibration_source  # the data module needs torch; only distillation checks this

    check_calibration_source(source)
    return source


def _teacher_spec(spec: str) -> str:
    zoo.check_spec(spec)
    return spec


DISTILL_OPTIONS = (
    Option("training_data", str, "local .txt/.jsonl text (or a calibration source such as c4) to distill on",
           required=True, check=_training_source, reads=READS_TEXT),
    Option("teacher_model", str, "teacher directory, embedded name or hub id (default: the model before pruning)",
           check=_teacher_spec, reads=READS_MODEL),
    Option("epochs", int, "passes over the training data (PersLM's default)", default=3, low=1),
    Option("learning_rate", float, "AdamW learning rate", default=5e-5, low=0, high=1, low_open=True),
    Option("temperature", float, "softmax temperature of the KL term", default=2.0, low=0, high=100, low_open=True),
    Option("ce_weight", float, "weight of the next-token cross-entropy (the rest is KL)", default=0.0, low=0, high=1),
    Option("max_steps", int, "optimizer steps at most (null, the default: no cap, epochs decide)", default=None, low=1,
           nullable=True),
    Option("train_seqlen", int, "tokens per training window", default=256, low=2),
    Option("train_batch_size", int, "windows per optimizer step", default=4, low=1),
    Option("loss_windows", int, "windows on which the loss before and after is measured", default=16, low=1),
)


class DistillSettings(SimpleNamespace):
    """The DISTILL_OPTIONS values, checked, with their defaults."""

    def __init__(self, **arguments):
        super().__init__(**parse_options("distill", DISTILL_OPTIONS, arguments))


def check_settings(settings: DistillSettings, config, method: str) -> None:
    """Refuse, from the student's config.json (a dict or a transformers config) and a local teacher's files, what
    would otherwise stop the run after the pruning: train_seqlen beyond the student's positions, a teacher_model
    directory that cannot be read, or one whose vocabulary differs from the student's. A teacher given as an
    embedded name or hub id is checked when it is fetched, as the distillation starts."""
    from pathlib import Path

    from ..core.model_checks import length_problems, model_files

    config = config if isinstance(config, dict) else config.to_dict()
    problems = length_problems("being pruned", config, {f"{method}: train_seqlen": settings.train_seqlen})
    if problems:
        raise MethodError(problems[0])
    teacher = Path(settings.teacher_model).expanduser() if settings.teacher_model else None
    if teacher is None or not teacher.is_dir():
        return
    theirs, ours = model_files(teacher, tokenizer=False).get("vocab_size"), config.get("vocab_size")
    if isinstance(theirs, int) and isinstance(ours, int) and theirs != ours:
        raise MethodError(f"{method}: teacher_model {teacher} has a vocabulary of {theirs} tokens (vocab_size in its "
                          f"config.json), the model being pruned {ours}; a teacher must share the student's vocabulary")


def training_windows(tokenizer, source: str, seqlen: int, data_dir=None) -> torch.Tensor:
    """The training text (documents joined by the end-of-text token) cut into non-overlapping windows of
    `seqlen` tokens, as the perplexity evaluator cuts its text."""
    from ..core.data import calibration_documents
    from ..core.token_windows import token_windows

    docs = calibration_documents(source, data_dir)
    text = (tokenizer.eos_token or "\n\n").join(docs)
    try:
        return token_windows(tokenizer, text, seqlen)
    except ValueError as exc:
        raise MethodError(f"distill: training_data {source}: {exc} (train_seqlen={seqlen})") from None


def zero_masks(model: nn.Module, adapter) -> dict[nn.Module, torch.Tensor]:
    """Where decoder-layer linear weights are exactly zero (pruning masks), per module."""
    masks = {}
    for index in range(adapter.num_layers(model)):
        for module in adapter.linear_targets(model, index).values():
            zeros = module.weight.data == 0
            if zeros.any():
                masks[module] = zeros
    return masks


def mean_loss(model: nn.Module, windows: torch.Tensor, batch_size: int, device) -> float:
    """Mean next-token cross-entropy over `windows`."""
    from ..core.token_windows import windows_nll

    total, tokens = windows_nll(model, windows, batch_size, device)
    return total / tokens


def distill_model(student: nn.Module, teacher: nn.Module, adapter, windows: torch.Tensor, settings: DistillSettings,
                  device, seed: int = 0, progress: bool = True) -> dict:
    """Train `student` towards `teacher` on `windows`; masks and structure stay as they are."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    home = next(student.parameters()).device
    student.to(device)
    teacher.to(device).eval()
    masks = zero_masks(student, adapter)
    held = windows[:settings.loss_windows]
    loss_before = mean_loss(student, held, settings.train_batch_size, device)
    per_epoch = math.ceil(windows.shape[0] / settings.train_batch_size)
    total_steps = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    temperature, history, step = settings.temperature, [], 0
    bar = tqdm(total=total_steps, desc="distill", unit="step", disable=not progress)
    student.train()
    with torch.enable_grad():
        while step < total_steps:
            order = torch.randperm(windows.shape[0], generator=generator)
            for start in range(0, order.numel(), settings.train_batch_size):
                if step >= total_steps:
                    break
                batch = windows[order[start:start + settings.train_batch_size]].to(device)
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=batch, use_cache=False).logits.float()
                logits = student(input_ids=batch, use_cache=False).logits.float()
                vocab = logits.shape[-1]
                kd = F.kl_div(F.log_softmax(logits / temperature, -1).reshape(-1, vocab),
                              F.log_softmax(teacher_logits / temperature, -1).reshape(-1, vocab),
                              log_target=True, reduction="batchmean") * temperature ** 2
                loss = (1 - settings.ce_weight) * kd
                if settings.ce_weight:
                    ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))
                    loss = loss + settings.ce_weight * ce
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                with torch.no_grad():
                    for module, mask in masks.items():
                        module.weight.data[mask] = 0
                history.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4f}")
    bar.close()
    student.eval()
    loss_after = mean_loss(student, held, settings.train_batch_size, device)
    student.to(home)
    teacher.to("cpu")
    window = max(1, min(10, len(history) // 4))
    return {"steps": step, "epochs_completed": round(step / per_epoch, 4), "training_windows": int(windows.shape[0]),
            "train_seqlen": settings.train_seqlen, "tokens_seen": step * settings.train_batch_size * settings.train_seqlen,
            "loss_first_steps": sum(history[:window]) / window, "loss_last_steps": sum(history[-window:]) / window,
            "ce_before": loss_before, "ce_after": loss_after, "ce_windows": int(held.shape[0]),
            "masked_modules": len(masks)}


def load_teacher(settings: DistillSettings, student: nn.Module):
    """The teacher named in the settings (float32, CPU), checked to share the student's vocabulary."""
    from ..core.modeling import load_model

    teacher, _ = load_model(zoo.resolve(settings.teacher_model), dtype="float32", device="cpu", tokenizer=False)
    ours, theirs = student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0]
    if ours != theirs:
        raise MethodError(f"distill: teacher_model vocabulary ({theirs}) differs from the student's ({ours})")
    return teacher
