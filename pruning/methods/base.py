"""The small interface every pruning method implements, and the registry that finds them by name.

Importing a method module never imports torch (torch and the modules built on it are imported inside
the functions that run on a model), so validating method arguments stays cheap for the workflow's
config check."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.arguments import positive
from ..core.options import MethodError, Option, parse_options
from ..core.protocols import Calibration

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..core.adapters import ArchitectureAdapter

__all__ = ["FACTS", "FAMILIES", "MethodError", "PruneContext", "PruningMethod", "available_methods", "base_methods",
           "full_fp32", "ignore_methods", "layer_removal_methods", "method_class", "method_families", "method_family",
           "moe_methods", "no_grad", "register", "retraining_methods", "streaming_methods"]

# The method families of PersLM's "Performance Impact" table, in its order (attention heads, layers, magnitude,
# distillation), the project's other families among them: every method's FAMILY is one of them. Magnitude
# pruning is a family of its own, as PersLM lists it; the calibration-based mask methods are the next one.
FAMILIES = ("head pruning", "width pruning (FLAP)", "layer/depth pruning", "magnitude pruning",
            "Wanda / SparseGPT", "distillation", "two-stage", "combined (all)")
# What every registered method declares about itself (class attributes, no defaults; `register` refuses a method
# that leaves one out), read by the tables, the grid and the refusals instead of lists of method names.
FACTS = ("FAMILY", "RETRAINS", "REMOVES_LAYERS", "SUPPORTS_MOE", "COMPOSITE")


def no_grad(function):
    """`torch.no_grad()` as a decorator that imports torch only when the function runs."""
    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)
    return without_gradients


def full_fp32(function):
    """Run `function` with CUDA's TF32 matmuls off (restored after): a Hessian solve or a reconstruction error
    in TF32 loses the precision it needs. Imports torch only when the function runs."""
    @functools.wraps(function)
    def in_full_fp32(*args, **kwargs):
        import torch

        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return function(*args, **kwargs)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return in_full_fp32


@dataclass
class PruneContext:
    """Everything a method may need besides its own options.

    `calibration` is a callable returning (input_ids [n, seqlen], protocol dict) so that methods that
    need no data never load any.
    """

    model: nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    device: torch.device
    calibration: Any = None
    seed: int = Calibration.seed
    batch_size: int = Calibration.batch_size
    progress: bool = True
    ignore: tuple[str, ...] = ()
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        positive({"batch_size": self.batch_size}, error=MethodError)


class PruningMethod:
    """A method declares its keywords in OPTIONS; `build` checks arguments against them (no model
    needed) and constructs the method, each option an attribute of the same name. `check_model(ctx)`
    refuses what needs the model to be known, before any work; `prune(ctx)` changes the model in place
    and returns its report (merged into prune.json)."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    description: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    # The FACTS, declared by each method:
    FAMILY: ClassVar[str]  # its PersLM family, one of FAMILIES
    RETRAINS: ClassVar[bool]  # always trains weights after pruning (a run may also retrain by LoRA recovery or
    # by distillation given training_data: prune.json records both)
    REMOVES_LAYERS: ClassVar[bool]  # removes whole decoder layers or their sub-blocks (the layer-removal table)
    # can prune a mixture-of-experts model (pruning/core/adapters.py); a composite: its own part, the methods it
    # runs answer for theirs
    SUPPORTS_MOE: ClassVar[bool]
    COMPOSITE: ClassVar[bool]  # runs other methods, whose ratios and options it passes on; never another's base
    # Changes weights only inside the engine's layer visits (or removes whole layers or sub-blocks), so its decoder
    # layers can stay on disk (pruning/core/streaming.py); `streaming_refusal` refines it per run.
    STREAMS: ClassVar[bool] = False
    WRAPS_BASE_METHOD: ClassVar[bool] = False  # takes any non-composite base_method's ratio and options beside its own
    READS_IGNORE: ClassVar[bool] = False  # prunes linears one by one, so `ignore` patterns can keep some dense

    def __init__(self, **values):
        vars(self).update(values)

    @classmethod
    def build(cls, **arguments) -> "PruningMethod":
        """Construct from keyword arguments (ratio and options), validated against OPTIONS."""
        return cls(**parse_options(cls.name, cls.OPTIONS, arguments))

    @classmethod
    def option(cls, name: str) -> Option:
        """The declaration of one option (for composite methods that reuse it under another name)."""
        return next(option for option in cls.OPTIONS if option.name == name)

    def options(self) -> dict:
        """The options that identify this run (recorded in prune.json)."""
        return {option.name: getattr(self, option.name) for option in self.OPTIONS}

    def check_config(self, config) -> None:
        """Refuse, from the model's config.json alone (before its weights are loaded; a dict or a transformers
        config), what this model makes impossible: a mixture-of-experts model unless the method SUPPORTS_MOE; a
        composite asks each method it runs. A method that refuses more calls this first."""
        if not self.SUPPORTS_MOE:
            from ..core.adapters import UnsupportedArchitecture, mixture_of_experts_type

            model_type = mixture_of_experts_type(config)
            if model_type:
                raise UnsupportedArchitecture(
                    f"{self.name} cannot prune mixture-of-experts model type {model_type!r} (head slicing, width "
                    f"slicing and sub-block removal know dense MLPs only); on MoE models use "
                    f"{' or '.join(', '.join(moe_methods()).rsplit(', ', 1))}")
        for step in self.steps():
            step.check_config(config)

    def check_calibration(self, nsamples: int) -> None:
        """Refuse, from the number of calibration windows alone (before the model loads), what it makes
        impossible; a composite asks each method it runs."""
        for step in self.steps():
            step.check_calibration(nsamples)

    def check_model(self, ctx: PruneContext) -> None:
        """Refuse, before any calibration or evaluation, what this model makes impossible."""

    def streaming_refusal(self) -> str | None:
        """Why this run cannot keep its decoder layers on disk (one line), or None; a composite asks each method
        it runs."""
        if not self.STREAMS:
            return (f"method {self.name} cannot stream layers from disk (it needs the whole model in memory); "
                    f"streaming supports {', '.join(streaming_methods())}")
        return next(filter(None, (step.streaming_refusal() for step in self.steps())), None)

    def reads_ignore(self) -> bool:
        """Whether this run honours `ignore` patterns (READS_IGNORE); a composite asks each method it runs."""
        return self.READS_IGNORE or any(step.reads_ignore() for step in self.steps())

    def searches_by_loss(self) -> bool:
        """Whether scoring runs the layers after each candidate to the head (a calibration-loss search), holding
        one more decoder layer and a candidate's hidden states meanwhile (the memory estimate counts them); a
        composite asks each method it runs."""
        return any(step.searches_by_loss() for step in self.steps())

    def steps(self):
        """The methods this one runs (a composite's stages, a distillation's base method), in attribute order."""
        for value in vars(self).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, PruningMethod):
                    yield item

    def prune(self, ctx: PruneContext) -> dict:
        raise NotImplementedError


def config_layer_count(config: dict) -> int | None:
    """The decoder layer count config.json declares (num_hidden_layers), or None where it declares none: what
    a method that plans from the layer count alone (depth, layers) checks before the weights load."""
    layers = config.get("num_hidden_layers")
    return layers if isinstance(layers, int) and not isinstance(layers, bool) else None


_REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"pruning method {cls.name!r} registered twice")
    missing = [fact for fact in FACTS if not hasattr(cls, fact)]
    if missing:
        raise RuntimeError(f"pruning method {cls.name!r} does not declare {', '.join(missing)}")
    if cls.FAMILY not in FAMILIES:
        raise RuntimeError(f"pruning method {cls.name!r}: FAMILY {cls.FAMILY!r} is not one of {', '.join(FAMILIES)}")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def reading_options() -> dict[str, str]:
    """Every method option whose value names something a run reads, and what it names (`Option.reads`: a model
    or a text source): the pre-flight resolves them as inputs of the output rule."""
    return {option.name: option.reads for cls in _REGISTRY.values() for option in cls.OPTIONS if option.reads}


def streaming_methods() -> list[str]:
    """The methods that can keep a model's decoder layers on disk (some only with some options)."""
    return [name for name in available_methods() if _REGISTRY[name].STREAMS]


def ignore_methods() -> list[str]:
    """The methods that honour `ignore` patterns themselves (composites running one honour them too)."""
    return [name for name in available_methods() if _REGISTRY[name].READS_IGNORE]


def layer_removal_methods() -> list[str]:
    """The methods that remove whole decoder layers or their sub-blocks."""
    return [name for name in available_methods() if _REGISTRY[name].REMOVES_LAYERS]


def retraining_methods() -> list[str]:
    """The methods that always train weights after pruning."""
    return [name for name in available_methods() if _REGISTRY[name].RETRAINS]


def moe_methods() -> list[str]:
    """The methods that prune a mixture-of-experts model on their own (composites run them as their stages)."""
    return [name for name in available_methods() if _REGISTRY[name].SUPPORTS_MOE and not _REGISTRY[name].COMPOSITE]


def base_methods() -> list[str]:
    """The methods another may run as its base_method: every method that runs no other."""
    return [name for name in available_methods() if not _REGISTRY[name].COMPOSITE]


def method_families() -> dict[str, list[str]]:
    """Each family of FAMILIES, in its order, with its methods (a family without any is left out)."""
    members = {family: [name for name in available_methods() if _REGISTRY[name].FAMILY == family]
               for family in FAMILIES}
    return {family: names for family, names in members.items() if names}


def method_family(name: str) -> str | None:
    """The family of a registered method; None for any other name (the dense baseline)."""
    return _REGISTRY[name].FAMILY if name in _REGISTRY else None


def method_class(name: str) -> type[PruningMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
