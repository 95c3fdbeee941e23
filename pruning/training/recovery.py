"""Recovery fine-tuning after pruning: LoRA adapters (peft) on every decoder-layer linear, trained on
calibration-side text (never the evaluation split) and merged back, so that the saved model is a plain
Hugging Face directory with the pruned structure.

Mask-pruned weights stay zero. While training, the update of a linear with zeros is multiplied by its keep
mask (the layer computes with W + (scale · B A) ⊙ keep); after the merge the zeros are written back, so the
merged model computes exactly what was trained. Structured models (removed layers, heads, sub-blocks, the
heterogeneous format) are trained as they are: LoRA goes on the linears they still have.

Deterministic for a seed: the adapters' initialisation, the order of the training windows, no dropout. The
text is cut into non-overlapping windows; a seeded few are held out, never trained on, and the mean token
loss on them before and after is what the record reports.

The settings and the sparsity schedules are declared torch-free in pruning/training/recovery_options.py; the loop
of rounds shared by gradual and iterative pruning (prune to the round's sparsity, then recover) is here.
Torch and peft are imported inside the functions, so that the workflow's config check can import this.
"""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .recovery_options import RECOVERY, RecoverySettings

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["RecoveryData", "RecoverySettings", "load_recovery_data", "recover", "recovery_documents",
           "prune_in_rounds"]


class RecoveryError(ValueError):
    """Recovery settings that the data or the model cannot satisfy."""


def recovery_documents(settings: RecoverySettings, data_dir=None) -> list[str]:
    """The documents of the training text (read before any model is loaded, so a missing split is refused
    first)."""
    from ..core.data import calibration_documents

    return calibration_documents(settings.data, data_dir)


@dataclass
class RecoveryData:
    """Training and held-out windows [n, seqlen], disjoint, and how they were cut."""

    train: torch.Tensor
    heldout: torch.Tensor
    documents_used: int

    def describe(self) -> dict:
        return {"training_windows": int(self.train.shape[0]), "heldout_windows": int(self.heldout.shape[0]),
                "documents_used": self.documents_used}


def load_recovery_data(tokenizer, settings: RecoverySettings, documents: list[str], seed: int = 0,
                       train_windows: int | None = None) -> RecoveryData:
    """Documents in a seeded order, joined by the end-of-text token and cut into non-overlapping windows of
    `settings.seqlen` tokens; only as many documents are tokenized as `heldout_windows` + `train_windows`
    windows need (default: one per training sample of `settings.steps` steps). The first windows are held out."""
    import torch

    wanted = settings.heldout_windows + (settings.steps * settings.batch_size if train_windows is None else train_windows)
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    separator = tokenizer(tokenizer.eos_token or "\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    used = 0
    for index in order:
        if len(stream) >= wanted * settings.seqlen:
            break
        stream += tokenizer(documents[index], add_special_tokens=False)["input_ids"] + separator
        used += 1
    count = len(stream) // settings.seqlen
    if count <= settings.heldout_windows:
        raise RecoveryError(f"{RECOVERY}: data {settings.data!r} gives {count} windows of seqlen={settings.seqlen} "
                            f"tokens, not more than heldout_windows={settings.heldout_windows}; use more text, a "
                            "shorter seqlen or fewer held-out windows")
    windows = torch.tensor(stream[:count * settings.seqlen], dtype=torch.long).reshape(count, settings.seqlen)
    return RecoveryData(windows[settings.heldout_windows:], windows[:settings.heldout_windows], used)


def _lora_targets(model: nn.Module, adapter) -> list[str]:
    """Full names of every linear inside the decoder layers (what is left of them in a structured model)."""
    return [name for index in range(adapter.num_layers(model)) for name in adapter.linear_targets(model, index)]


def _keep_masked(layer, keep: torch.Tensor) -> None:
    """Make a peft LoRA layer compute with W + (its update) ⊙ keep, the weight that merging and re-masking
    will give, so that training optimizes exactly the model that is saved."""
    import torch

    base = layer.get_base_layer()

    def forward(x, *args, **kwargs):
        delta = layer.get_delta_weight("default") * keep
        weight = base.weight + delta.to(base.weight.dtype)
        return torch.func.functional_call(base, {"weight": weight}, (x, *args), kwargs)

    layer.forward = forward


def recover(model: nn.Module, adapter, data: RecoveryData, settings: RecoverySettings, device, seed: int = 0,
            progress: bool = True, description: str = RECOVERY) -> dict:
    """LoRA-train `model` in place on `data.train` for `settings.steps` steps, merge, re-apply the zeros;
    returns the record (losses on the held-out windows before and after, time, sizes)."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from tqdm.auto import tqdm

    from .distillation import mean_loss, zero_masks

    started = time.perf_counter()
    home = next(model.parameters()).device
    model.to(device)
    masks = zero_masks(model, adapter)
    targets = _lora_targets(model, adapter)
    if not targets:
        raise RecoveryError(f"{RECOVERY}: the model has no linear layer left inside its decoder layers to adapt")
    trainable_before = {parameter: parameter.requires_grad for parameter in model.parameters()}
    was_training = model.training
    model.eval()  # no dropout: the trained function is the saved one
    loss_before = mean_loss(model, data.heldout, settings.batch_size, device)

    torch.manual_seed(seed)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=targets,
                        bias="none", fan_in_fan_out=adapter.family == "gpt2")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = get_peft_model(model, config)
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        if layer.get_base_layer() in masks:
            _keep_masked(layer, ~masks[layer.get_base_layer()])
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    history = []
    with torch.enable_grad():
        for _ in tqdm(range(settings.steps), desc=description, unit="step", disable=not progress):
            while len(order) < settings.batch_size:  # a fresh seeded permutation each epoch
                order += torch.randperm(data.train.shape[0], generator=generator).tolist()
            batch = data.train[order[:settings.batch_size]].to(device)
            del order[:settings.batch_size]
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            history.append(loss.item())
    merged = wrapped.merge_and_unload()
    if merged is not model:
        raise RuntimeError("peft merge_and_unload returned another model than the one it adapted")
    with torch.no_grad():
        for module, mask in masks.items():
            module.weight.data[mask] = 0
    for parameter, trainable in trainable_before.items():
        parameter.requires_grad_(trainable)
    loss_after = mean_loss(model, data.heldout, settings.batch_size, device)
    model.train(was_training)
    model.to(home)
    window = max(1, min(10, len(history) // 4))
    return {**settings.as_dict(), "seed": seed, **data.describe(),
            "tokens_seen": settings.steps * settings.batch_size * settings.seqlen,
            "lora_modules": len(layers), "masked_modules": len(masks),
            "trainable_parameters": sum(p.numel() for p in parameters),
            "loss_before": loss_before, "loss_after": loss_after,
            "loss_first_steps": sum(history[:window]) / window if history else None,
            "loss_last_steps": sum(history[-window:]) / window if history else None,
            "seconds": round(time.perf_counter() - started, 3)}


def prune_in_rounds(ctx, schedule: list[float], prune_round: Callable[[float], dict], settings: RecoverySettings,
                    description: str) -> dict:
    """Gradual and iterative pruning: for each sparsity of `schedule`, `prune_round(sparsity)` (which prunes
    ctx.model and returns its report), then `settings.steps` recovery steps (a fresh adapter each round, its
    own seed). Returns the last round's report with every round's sparsity and recovery record."""
    data = None
    if settings.steps:
        documents = recovery_documents(settings, ctx.extras.get("data_dir"))
        data = load_recovery_data(ctx.tokenizer, settings, documents, ctx.seed,
                                  train_windows=len(schedule) * settings.steps * settings.batch_size)
    rounds, report = [], {}
    for index, sparsity in enumerate(schedule):
        report = prune_round(sparsity)
        record = {"round": index + 1, "sparsity": sparsity, "total_sparsity": report.get("total_sparsity")}
        if data is not None:
            record[RECOVERY] = recover(ctx.model, ctx.adapter, data, settings, ctx.device, ctx.seed + index,
                                       ctx.progress, f"{description} round {index + 1}/{len(schedule)}")
        rounds.append(record)
    return {**report, "rounds": rounds}
