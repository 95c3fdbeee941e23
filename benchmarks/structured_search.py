"""How long the calibration-loss searches take against one calibration forward: Quark's window search (depth,
criterion perplexity) and two-stage pruning (block-influence pass, then greedy attention rounds).

Both searches run the model's prefix once and, per candidate, only the layers after the candidate plus the final
norm and head (pruning/methods/suffix_loss.py). That per-candidate suffix is their floor: the calibration loss of a model
without window s (or without candidate c's attention) needs every later layer and the full-vocabulary head on the
changed hidden states, and no two candidates share those inputs. The script therefore prints, besides seconds
and the ratio to one forward, the work each search did in forward units, counted while it runs: rows through
each decoder layer and the head, weighted by their parameters at the time (a removed sub-block costs nothing),
against one forward's rows × all layers and the head. Matching measured and counted ratios mean the search is
at its floor; the remaining gap to the target is work the exact criterion requires.

Each row also shows how decisively the search's choice beat its runner-up, window by window (the paired t statistic
and the windows won, pruning/methods/search.py `choice_margin`): a choice won on few windows is one another draw
of calibration windows may not make, so no cheaper search can promise to repeat it.

With `--search-windows N` both searches also run with search_windows=N (candidates scored on the first N
calibration windows only, pruning/methods/search.py), and their rows say whether they chose as the exact search.
`--search race` times the raced searches (search=race) instead of the exact ones, `--search exact race` both (then
the raced rows say whether they chose as the exact search); each raced row gives its candidate-windows against
the exact search's.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/structured_search.py            # smollm2-135m
    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/structured_search.py --model ../shared/models/stories260K --quark-blocks 2 --two-stage-rate 0.3 --search-windows 8

`measure(...)` returns the same figures as a dict for a driver that runs every benchmark at once.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import pruning
from pruning.core.data import calibration_windows
from pruning.evaluation.perplexity import forward_throughput
from pruning.core.io import atomic_write_text
from pruning.methods import PruneContext
from pruning.core.surgery import numel

TARGET = 5.0  # issue 14: each search at most 5 × one calibration forward (met only if wall and CPU ratios both are)
TIMING_NOTE = ("Each time is one run, so it has no ± of its own: separate runs of this script on an idle machine "
               "have given ratios about 12 % apart (published search_windows 8 runs: 4.48 and 3.99 x, 4.63 and "
               "4.16 x). The counted work is deterministic (the same rows through the same modules on every run) "
               "but weighs each module by its parameters only; a ratio within that spread of the target is at the "
               "target, not clearly on either side.")


class Clock:
    """Wall and CPU seconds of this process (on a shared machine the CPU seconds of a 1-thread run are the
    steadier figure: another job's load stretches wall time, not the work done)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def calibration_forward(model, windows: torch.Tensor, batch_size: int) -> Clock:
    """One plain forward of the model (with logits) over the calibration windows in batches, after a one-window
    warm-up: the same floor as benchmarks/core_methods.py, timed here on the loaded model with CPU seconds too."""
    forward_throughput(model, windows[:1], 1)
    with Clock() as clock:
        forward_throughput(model, windows, batch_size)
    return clock


class WorkCounter:
    """Rows through every decoder layer and the head, weighted by the module's parameters when it ran."""

    def __init__(self, model):
        adapter = pruning.get_adapter(model)
        self.modules = [*adapter.decoder_layers(model), adapter.module(model, adapter.lm_head)]
        self.work = 0
        self.handles = []

    def __enter__(self):
        for module in self.modules:
            self.handles.append(module.register_forward_hook(self._count, with_kwargs=True))
        return self

    def _count(self, module, args, kwargs, _output):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.work += hidden.shape[:-1].numel() * numel(module)

    def __exit__(self, *_exc):
        for handle in self.handles:
            handle.remove()

    def forward_work(self, tokens: int) -> int:
        """Work of one forward over `tokens` tokens of the intact model."""
        return tokens * sum(numel(module) for module in self.modules)


def searches(quark_blocks: int = 2, two_stage_rate: float = 0.25, search_windows: int | None = None,
             nsamples: int = 32, kinds: tuple[str, ...] = ("exact",)) -> dict[str, tuple[str, dict]]:
    """The runs to time, name -> (method, options): each search exact (name) and/or raced (name_race) as `kinds`
    asks and, with `search_windows`, on that subset (name_subset), which is refused here, before anything is
    timed, where the method refuses it."""
    exact = {"quark": ("depth", {"num_blocks": quark_blocks, "criterion": "perplexity"}),
             "two_stage": ("two_stage", {"prune_rate": two_stage_rate})}
    runs = {}
    for name, (method, options) in exact.items():
        if "exact" in kinds:
            runs[name] = (method, options)
        if "race" in kinds:
            runs[f"{name}_race"] = (method, {**options, "search": "race"})
        if search_windows is not None:
            subset = {**options, "search_windows": search_windows}
            pruning.build_method(method, **subset).check_calibration(nsamples)
            runs[f"{name}_subset"] = (method, subset)
    return runs


def measure(model: str = "smollm2-135m", nsamples: int = 32, seqlen: int = 512, batch_size: int = 8, seed: int = 0,
            quark_blocks: int = 2, two_stage_rate: float = 0.25, threads: int | None = None,
            search_windows: int | None = None, kinds: tuple[str, ...] = ("exact",)) -> dict:
    """Seconds of one calibration forward, Quark's window search and two-stage pruning on `model`, with the
    calibration protocol of the default grid (C4, nsamples × seqlen, seed, batch_size); ratios to the forward,
    counted work in forward units, and the choices each search made; with `search_windows`, each search again
    on that subset (entries quark_subset, two_stage_subset), and whether it chose as the exact one."""
    runs = searches(quark_blocks, two_stage_rate, search_windows, nsamples, kinds)
    if threads:
        torch.set_num_threads(threads)
    dense, tokenizer = pruning.load_model(pruning.fetch_model(model))
    windows, protocol = calibration_windows(tokenizer, "c4", nsamples, seqlen, seed)
    forward = calibration_forward(dense, windows, batch_size)
    print(f"one calibration forward: {forward.wall:.1f} s ({forward.cpu:.1f} CPU s)", file=sys.stderr, flush=True)
    result = {"model": model, "calibration": protocol.as_dict(), "batch_size": batch_size,
              "threads": torch.get_num_threads(), "forward_seconds": forward.wall, "forward_cpu_seconds": forward.cpu,
              "target_ratio": TARGET}
    for name, (method, options) in runs.items():
        pruned = copy.deepcopy(dense)
        ctx = PruneContext(model=pruned, tokenizer=tokenizer, adapter=pruning.get_adapter(pruned),
                           device=torch.device("cpu"), calibration=lambda: (windows, protocol.as_dict()),
                           seed=seed, batch_size=batch_size, progress=False)
        counter = WorkCounter(pruned)
        forward_work = counter.forward_work(windows.numel())
        with counter, Clock() as clock:
            report = pruning.build_method(method, **options).prune(ctx)
        choices = ({"removed_layers": report["removed_layers"], "window_ppl": report["window_ppl"],
                    "choice_margin": report.get("choice_margin")} if method == "depth"
                   else {"ffn_removed_layers": report["ffn_removed_layers"],
                         "mha_removed_layers": report["mha_removed_layers"],
                         "attention_rounds": report["attention_rounds"]})
        result[name] = {"method": method, "options": options, "seconds": clock.wall, "cpu_seconds": clock.cpu,
                        "ratio": clock.wall / forward.wall, "cpu_ratio": clock.cpu / forward.cpu,
                        "work_ratio": counter.work / forward_work, "meets_target": max(clock.wall / forward.wall, clock.cpu / forward.cpu) <= TARGET,
                        **choices, **({"race": report["race"]} if "race" in report else {})}
        exact = name.removesuffix("_subset").removesuffix("_race")
        if exact != name and exact in result:
            result[name]["same_choice"] = _choice(result[name]) == _choice(result[exact])
        print(f"{name}: {clock.wall:.1f} s ({clock.cpu:.1f} CPU s), {result[name]['ratio']:.2f} x forward "
              f"({result[name]['cpu_ratio']:.2f} in CPU seconds), counted work {result[name]['work_ratio']:.2f} x",
              file=sys.stderr, flush=True)
        del pruned, ctx
    return result


def _choice(row: dict) -> str:
    """What a search removed, in words."""
    if row["method"] == "depth":
        return f"layers {row['removed_layers']}"
    return f"FFN {row['ffn_removed_layers']}, attention {row['mha_removed_layers']}"


def _margin(row: dict) -> str:
    """The choice's margin over its runner-up (per attention round for two-stage), in words."""
    margins = ([row["choice_margin"]] if row["method"] == "depth" else
               [r.get("choice_margin") for r in row["attention_rounds"]])
    return "; ".join("-" if m is None else
                     f"t {m['paired_t'] if m['paired_t'] is not None else '-'}, {m['windows_won']}/{m['windows']} windows"
                     f" vs {m['runner_up']}" for m in margins) or "-"


def summary(result: dict) -> str:
    subset = any(name in result for name in ("quark_subset", "two_stage_subset", "quark_race", "two_stage_race"))
    lines = [f"{result['model']}: calibration {result['calibration']['source']} {result['calibration']['nsamples']} x "
             f"{result['calibration']['seqlen']} (seed {result['calibration']['seed']}, batch {result['batch_size']}), "
             f"CPU float32, {result['threads']} threads; one calibration forward (with logits) "
             f"{result['forward_seconds']:.2f} s ({result['forward_cpu_seconds']:.2f} CPU s); "
             f"target <= {result['target_ratio']:g} x forward. {TIMING_NOTE}",
             "", "| search | seconds | x forward | CPU seconds | x forward (CPU) | counted work (x forward) | target met "
                 "| choice | margin over the runner-up (paired t, windows won) |" + (" same choice as exact |" if subset else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if subset else "")]
    for name in ("quark", "quark_subset", "quark_race", "two_stage", "two_stage_subset", "two_stage_race"):
        if name not in result:
            continue
        r = result[name]
        label = name
        if name.endswith("_subset"):
            label = f"{name.removesuffix('_subset')}, search_windows {r['options']['search_windows']}"
        elif name.endswith("_race"):
            race = r["race"]
            label = (f"{name.removesuffix('_race')}, raced (z {race['z']:g}; {race['candidate_windows']} of "
                     f"{race['exact_candidate_windows']} candidate-windows)")
        if not subset:
            same = ""
        elif name in ("quark", "two_stage"):
            same = " (exact) |"
        else:
            same = {True: " yes |", False: " no |", None: " (exact not run) |"}[r.get("same_choice")]
        lines.append(f"| {label} | {r['seconds']:.2f} | {r['ratio']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['cpu_ratio']:.2f} | {r['work_ratio']:.2f} | {'yes' if r['meets_target'] else 'no'} | "
                     f"{_choice(r)} | {_margin(r)} |{same}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quark-blocks", type=int, default=2, help="Quark window size (default grid: 2)")
    parser.add_argument("--two-stage-rate", type=float, default=0.25, help="two-stage prune_rate (default grid: 0.25)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--search-windows", type=int, default=None,
                        help="also time both searches scoring their candidates on the first N calibration windows "
                             "(search_windows; default: the exact searches only)")
    parser.add_argument("--search", nargs="+", choices=["exact", "race"], default=["exact"],
                        help="which searches to time: exact, race (search=race) or both (default: exact)")
    parser.add_argument("--out", default=None, help="also write the table here, a .md path (and a .json beside it)")
    args = parser.parse_args()
    if args.out and Path(args.out).suffix != ".md":
        parser.error(f"--out {args.out}: give a .md path (the .json goes beside it)")
    result = measure(args.model, args.nsamples, args.seqlen, args.batch_size, args.seed, args.quark_blocks,
                     args.two_stage_rate, args.threads, args.search_windows, tuple(args.search))
    table = summary(result)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
