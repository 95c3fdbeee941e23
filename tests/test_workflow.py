"""The Snakemake workflow: job counts of the default grid (also as a fresh clone runs the README's main
command), config checks (optional parts included), lint, a tiny real run (killed mid-way, then finished with
--rerun-incomplete) that ends in the tables and publishes them, and the same run on a real single-node Slurm
(tests/slurm/cluster.sh) giving the same numbers."""
from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import DATA_DIR, REPO, SHARED, STORIES

# Every test here but test_publish_replaces_tables_and_plots_together runs Snakemake: the file is end to end.
pytestmark = pytest.mark.slow

VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
DEFAULT_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
STORIES_NOTE = "out of domain for WikiText-2"
TINY_CONFIG = {
    "models": {"stories260K": {"spec": str(STORIES), "note": STORIES_NOTE}},
    "methods": {
        "magnitude": {"method": "magnitude", "ratios": {"sparsity": [0.5], "nm": ["2:4"]}},
        "wanda": {"method": "wanda", "ratios": {"sparsity": [0.5], "nm": ["2:4"]}},
    },
    "protocol": "tiny",
    "protocols": {"tiny": {"calibration": {"source": "c4", "nsamples": 8, "seqlen": 64},
                           "evaluation": {"dataset": "wikitext2", "seqlen": 128, "max_windows": 8}}},
    "data_dir": str(DATA_DIR),
    "threads": 1,
    "keep_models": False,
}
# Every job of the default grid: 2 models; 3 methods x (2 sparsities + 2:4) = 9 pruned runs per model; on
# smollm2 only, OWL-Wanda at 70 %, 12 structured runs (angular and cosine x PruneGPT's 4 block counts, Quark,
# layers, heads, two_stage, FLAP) and a distillation; + 1 dense each: 35 rows, 33 pruned. The 17 smollm2 rows
# that are not ppl_only (the 8 angular and cosine rows are) also get 4 zero-shot tasks, GGUF f16 and q4_k_m
# (convert + llama.cpp evaluation each) and speed. Each prune is installed as its row's model by a local job
# once it has succeeded (install_model).
DEFAULT_GRID_JOBS = {"fetch_model": 2, "prune": 33, "install_model": 33, "perplexity": 35, "zeroshot": 68,
                     "gguf_convert": 34, "gguf_eval": 34, "speed": 17, "plots": 1, "tables": 1, "all": 1, "total": 259}
TINY_ROWS = [("dense", "base"), ("magnitude", "s0.50"), ("magnitude", "nm2-4"), ("wanda", "s0.50"), ("wanda", "nm2-4")]


def snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 600,
              **popen) -> subprocess.CompletedProcess:
    """`python -m snakemake` on the repository's Snakefile in `workdir`, with `config` (written as YAML)
    replacing the workflow's own config."""
    return subprocess.run(snakemake_command(workdir, args, config), capture_output=True, text=True, timeout=timeout,
                          **popen)


def snakemake_command(workdir: Path, args, config: dict | None) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [PYTHON, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command += ["--configfile", str(path), "--replace-workflow-config"]
    return command + list(args)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    block = output.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def pruning_commands(output: str) -> list[list[str]]:
    """Arguments of every `python -m pruning ...` in the shell commands printed by a dry run with -p."""
    commands = []
    for line in output.splitlines():
        if "python -m pruning " in line:
            text = line.split("python -m pruning ", 1)[1].split(" > ", 1)[0]
            commands.append(shlex.split(text))
    return commands


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- the default grid, named targets, optional evaluations -----------------------------------------

def test_default_config_dry_run_job_counts(tmp_path):
    result = snakemake(tmp_path, "-n", "--cores", "2", config=DEFAULT_CONFIG)
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == DEFAULT_GRID_JOBS
    for table in ("sparsity-smollm2-135m", "sparsity-stories260K", "depth-smollm2-135m", "layer-removal", "two-stage"):
        assert f"results/tables/{table}.md" in result.stdout
    assert "results/plots/sparsity-stories260K.png" in result.stdout


def readme_main_command() -> list[str]:
    """The README's main command, its first code block: `bash scripts/setup.sh && <the grid run>`; the run's
    arguments."""
    block = (REPO / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    setup, run = block.strip().split(" && ")
    assert setup == "bash scripts/setup.sh"
    return shlex.split(run)


def test_fresh_clone_plans_the_whole_default_grid(tmp_path):
    """A fresh clone of the committed HEAD, `../shared` beside it: the README's main command (dry run) plans
    every job of the default grid (the published tables do not satisfy `all`), and the plan writes nothing
    git tracks or sees. The clone has no .venv: the command runs with this test's Python."""
    clone = tmp_path / "llm-pruning-zoo"
    cloned = subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
                            capture_output=True, text=True, timeout=300)
    assert cloned.returncode == 0, cloned.stderr
    (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    command = readme_main_command()
    assert command[:3] == [".venv/bin/python", "-m", "snakemake"]
    result = subprocess.run([PYTHON, *command[1:], "-n"], cwd=clone, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout) == DEFAULT_GRID_JOBS
    assert (clone / "results" / "published" / "tables").is_dir()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""


def test_publish_plans_the_grid_then_itself(tmp_path):
    """`snakemake publish` depends on the whole grid (every table, plot and metric file), so it runs last."""
    result = snakemake(tmp_path, "-n", "--cores", "2", "publish", config=DEFAULT_CONFIG)
    assert result.returncode == 0, result.stderr
    expected = {**DEFAULT_GRID_JOBS, "publish": 1}
    del expected["all"]
    assert job_counts(result.stdout) == expected


@pytest.mark.parametrize("target, expected", [
    ("prune_all", {"fetch_model": 2, "prune": 33, "install_model": 33, "prune_all": 1, "total": 69}),
    ("evaluate_all", {**{k: v for k, v in DEFAULT_GRID_JOBS.items() if k not in ("tables", "plots", "all")},
                      "evaluate_all": 1, "total": 257}),
    ("results/metrics/stories260K/wanda/nm2-4/ppl.json", {"fetch_model": 1, "prune": 1, "install_model": 1,
                                                          "perplexity": 1, "total": 4}),
    ("results/metrics/smollm2-135m/dense/base/ppl.json", {"fetch_model": 1, "perplexity": 1, "total": 2}),
])
def test_named_targets(tmp_path, target, expected):
    result = snakemake(tmp_path, "-n", "--cores", "2", target, config=DEFAULT_CONFIG)
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == expected


def test_optional_evaluations_join_the_grid(tmp_path):
    """Zero-shot (one job per task), GGUF (convert + eval per output type) and speed on every grid row."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["zeroshot"] = {"tasks": ["arc_easy", "boolq"], "limit": 20}
    config["gguf"] = {"outtypes": ["f16", "q8_0"]}
    config["speed"] = {"enabled": True, "gguf_outtype": "q8_0"}
    config["methods"]["depth-angular"] = {"method": "depth", "ratios": {"num_blocks": [2, 4]},
                                          "options": {"criterion": "angular"}, "models": ["smollm2-135m"]}
    result = snakemake(tmp_path, "-n", "--cores", "2", "-p", config=config)
    assert result.returncode == 0, result.stderr
    pruned = 33 + 2
    rows = pruned + 2
    measured = rows - 8  # the default grid's eight angular/cosine rows are ppl_only: perplexity, nothing else
    assert job_counts(result.stdout) == {
        "fetch_model": 2, "prune": pruned, "install_model": pruned, "perplexity": rows, "zeroshot": 2 * measured,
        "gguf_convert": 2 * measured, "gguf_eval": 2 * measured, "speed": measured, "tables": 1, "plots": 1,
        "all": 1, "total": 2 + 2 * pruned + rows + 7 * measured + 3}
    for table in ("summary", "sparsity-smollm2-135m", "depth-smollm2-135m", "layer-removal", "zeroshot", "gguf"):
        assert f"results/tables/{table}.csv" in result.stdout
    assert "--option num_blocks=2 --option 'criterion=\"angular\"'" in result.stdout
    assert "--task boolq --num-fewshot 0 --batch-size 32 --limit 20" in result.stdout
    assert "--gguf results/gguf/smollm2-135m/depth-angular/L4/model-q8_0.gguf" in result.stdout
    # every command line a job would run is accepted by the CLI it calls
    from pruning.cli import build_parser

    commands = pruning_commands(result.stdout)
    assert {c[0] for c in commands} == {"fetch-model", "prune", "eval", "zeroshot", "convert", "gguf-eval", "speed"}
    parser = build_parser()
    for command in commands:
        parser.parse_args(command)



def test_save_format_reaches_the_prune_commands(tmp_path):
    """save_format: the top-level value for every row, a method entry's own value over it; dense adds no flag."""
    config = copy.deepcopy(TINY_CONFIG)
    config["save_format"] = "sparse-bitmask"
    config["methods"]["wanda"]["save_format"] = "auto"
    config["methods"]["wanda24"] = {"method": "wanda", "ratios": {"nm": ["2:4"]}, "save_format": "sparse-24-bitmask"}
    config["methods"]["magnitude"]["save_format"] = "dense"
    result = snakemake(tmp_path, "-n", "--cores", "1", "-p", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    formats = {}
    for command in (c for c in pruning_commands(result.stdout) if c[0] == "prune"):
        method = command[command.index("--output-dir") + 1].split("/")[-2]
        formats.setdefault(method, set()).add(command[command.index("--save-format") + 1]
                                              if "--save-format" in command else None)
    assert formats == {"magnitude": {None}, "wanda": {"auto"}, "wanda24": {"sparse-24-bitmask"}}


def test_max_memory_reaches_the_prune_commands_or_is_refused(tmp_path):
    """max_memory: passed to every prune job as --max-memory; a value that is not a size is refused before any job."""
    config = copy.deepcopy(TINY_CONFIG)
    config["max_memory"] = "2GiB"
    result = snakemake(tmp_path / "good", "-n", "--cores", "1", "-p", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    prunes = [c for c in pruning_commands(result.stdout) if c[0] == "prune"]
    assert prunes and all(c[c.index("--max-memory") + 1] == "2GiB" for c in prunes)
    config["max_memory"] = "plenty"
    result = snakemake(tmp_path / "bad", "-n", "--cores", "1", config=config)
    assert result.returncode != 0
    assert "config.max_memory: --max-memory 'plenty'" in result.stdout + result.stderr


def test_per_task_shots_and_the_tables_and_plots_they_add(tmp_path):
    """zeroshot.num_fewshot as a map task -> shots (PruneGPT's): each task's jobs get its own shots, a task the
    map leaves out runs 0-shot; zero-shot and speed add the downstream table and the zero-shot/speed plot."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["zeroshot"] = {"tasks": ["winogrande", "boolq", "gsm8k"], "num_fewshot": {"winogrande": 5, "gsm8k": 5},
                          "limit": 4}
    config["speed"] = {"enabled": True}
    result = snakemake(tmp_path, "-n", "--cores", "2", "-p", config=config)
    assert result.returncode == 0, result.stderr
    for task, shots in (("winogrande", 5), ("boolq", 0), ("gsm8k", 5)):
        lines = [line for line in result.stdout.splitlines() if f"--task {task} " in line]
        # 35 rows of the default grid, less its eight ppl_only depth rows
        assert len(lines) == 27 and all(f"--num-fewshot {shots} " in line for line in lines), task
    for name in ("tables/downstream.md", "tables/comparison.md", "tables/impact.md", "plots/zeroshot-speed.png",
                 "plots/structured-smollm2-135m.png"):
        assert f"results/{name}" in result.stdout, name


def job_resources(output: str, rule: str) -> dict[str, str]:
    """The resources a dry run prints for the first job of `rule`."""
    block = output.split(f"rule {rule}:", 1)[1]
    line = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
    return dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))


def test_resources_from_the_rules_through_the_slurm_profile(tmp_path):
    """Memory, runtime and GPUs come from the rules (one table in common.smk); the Slurm profile adds only
    account and partition, and --set-resources still overrides per rule."""
    config = {**TINY_CONFIG, "device": "cuda"}
    profile = ["--workflow-profile", str(REPO / "profiles" / "slurm")]
    result = snakemake(tmp_path, "-n", *profile, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    prune = job_resources(result.stdout + result.stderr, "prune")
    assert (prune["mem_mb"], prune["runtime"], prune["gpu"]) == ("32000", "240", "1")
    assert (prune["slurm_account"], prune["slurm_partition"]) == ("your-account", "your-partition")
    perplexity = job_resources(result.stdout + result.stderr, "perplexity")
    assert (perplexity["mem_mb"], perplexity["runtime"], perplexity["gpu"]) == ("16000", "120", "1")
    result = snakemake(tmp_path, "-n", *profile, "--set-resources", "prune:mem_mb=64000", config=config)
    assert job_resources(result.stdout + result.stderr, "prune")["mem_mb"] == "64000"


def test_lint_passes():
    result = subprocess.run([PYTHON, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


# ---- bad configs: each rejected before any job, naming its key ----------------------------------------

def _bad(mutate):
    config = copy.deepcopy(TINY_CONFIG)
    mutate(config)
    return config


# The schema's cases (its method rules generated from the registry) and a few of the library's pre-flight, to
# show both reach Snakemake; every pre-flight case is tested against the library in tests/test_preflight.py.
BAD_CONFIGS = {
    "sparsity 1.5": (lambda c: c["methods"]["wanda"]["ratios"].update(sparsity=[1.5]),
                     "config.methods.wanda.ratios.sparsity[0]: 1.5 is greater than or equal to the maximum of 1"),
    "malformed N:M": (lambda c: c["methods"]["wanda"]["ratios"].update(nm=["2-4"]),
                      "config.methods.wanda.ratios.nm[0]: '2-4' does not match"),
    "unknown method": (lambda c: c["methods"]["wanda"].update(method="wandb"),
                       "config.methods.wanda.method: 'wandb' is not one of"),
    "wrong type": (lambda c: c.update(threads="two"), "config.threads: 'two' is not of type 'integer'"),
    "ratio kind of another method": (lambda c: c["methods"]["magnitude"].update(ratios={"num_blocks": [2]}),
                                     "config.methods.magnitude.ratios: 'num_blocks' is not one of ['sparsity', 'nm']"),
    "unknown method option": (lambda c: c["methods"]["magnitude"].update(options={"bogus": 1}),
                              re.compile(r"config\.methods\.magnitude\.options: .*'bogus'")),
    "calibration on the test split": (
        lambda c: c["protocols"]["tiny"]["calibration"].update(source="wikitext2"),
        "config.protocols.tiny.calibration.source: 'wikitext2' should not be valid"),
    "misspelt top-level key": (lambda c: c.update(modles={}),
                               "config: Additional properties are not allowed ('modles' was unexpected)"),
    "method named dense": (lambda c: c["methods"].update(dense={"method": "magnitude", "ratios": {"sparsity": [0.5]}}),
                           "config.methods: 'dense' should not be valid"),
    "bad device": (lambda c: c.update(device="tpu"), "config.device: 'tpu' does not match"),
    # the library's pre-flight, through Snakemake
    "missing model directory": (lambda c: c["models"].update(ghost="./no/such/model"),
                                "config.models.ghost: "),
    "N not below M": (lambda c: c["methods"]["wanda"]["ratios"].update(nm=["4:2"]),
                      "config.methods.wanda.ratios.nm[0]: wanda: nm: N:M pattern needs integers 1 <= N < M "
                      "(N kept out of every M), got 4:2"),
    "more blocks than layers": (lambda c: c["methods"].update(depth={"method": "depth", "ratios": {"num_blocks": [2, 8]}}),
                                "config.methods.depth.ratios.num_blocks[1]: depth: removing 8 of 5 layers would leave "
                                "none (model stories260K)"),
}


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory):
    """Every bad config run for real (not -n), two at a time."""
    def run(item):
        name, (mutate, _) = item
        workdir = tmp_path_factory.mktemp("bad")
        return name, workdir, snakemake(workdir, "--cores", "1", config=_bad(mutate), timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (workdir, result) for name, workdir, result in pool.map(run, BAD_CONFIGS.items())}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_rejected_naming_the_key(bad_config_runs, case):
    workdir, result = bad_config_runs[case]
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "invalid workflow config" in output
    expected = BAD_CONFIGS[case][1]
    assert (expected.search(output) if isinstance(expected, re.Pattern) else expected in output), output[-2000:]
    assert not any((workdir / name).exists() for name in ("results", "resources", "logs"))


def test_duplicate_key_rejected(tmp_path):
    """YAML keeps the last of two equal keys without a word: a config file that writes one twice is refused."""
    text = yaml.safe_dump(TINY_CONFIG, sort_keys=False)
    text = text.replace("methods:\n", "methods:\n  wanda:\n    method: wanda\n    ratios: {sparsity: [0.6]}\n", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    command = snakemake_command(tmp_path, ["-n", "--cores", "1", "--configfile", str(path),
                                           "--replace-workflow-config"], None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "invalid workflow config" in output
    assert f"config.methods.wanda: written twice in {path}" in output, output[-2000:]


def test_heads_on_a_moe_model_refused_naming_the_row(tmp_path):
    """The pre-flight of every grid row runs before any job: heads on a mixture-of-experts model (known from its
    config.json) is refused by a dry run, naming the row and the model, beside the rows that are fine."""
    moe = tmp_path / "tinymoe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps(
        {"model_type": "mixtral", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 256, "vocab_size": 512,
         "num_local_experts": 4, "num_experts_per_tok": 2}))
    config = _bad(lambda c: (c["models"].update(tinymoe=str(moe)),
                             c["methods"].update(heads={"method": "heads", "ratios": {"fraction": [0.25]}})))
    output = _refused(snakemake(tmp_path / "run", "-n", "--cores", "1", config=config), tmp_path / "run")
    assert ("config.methods.heads.ratios.fraction[0]: heads cannot prune mixture-of-experts model type 'mixtral'"
            in output), output[-2000:]
    assert "(model tinymoe)" in output and "(model stories260K)" not in output


def test_depth_checked_where_the_model_config_is_readable_offline(tmp_path):
    """A hub model not in any cache has no readable config.json: its depth is not checked (the job will
    check it); once fetched into resources/models/, the fetched config.json is."""
    config = _bad(lambda c: (c["models"].update(hubmodel="no-such-org/no-such-model"),
                             c["methods"].update(depth={"method": "depth", "ratios": {"num_blocks": [8]},
                                                        "models": ["hubmodel"]})))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    fetched = tmp_path / "resources" / "models" / "hubmodel"
    fetched.mkdir(parents=True)
    (fetched / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 6}))
    result = snakemake(tmp_path, "-n", "--cores", "1", config=config)
    assert result.returncode != 0
    assert ("config.methods.depth.ratios.num_blocks[0]: depth: removing 8 of 6 layers would leave none "
            "(model hubmodel)") in result.stdout + result.stderr


# ---- optional parts a config asks for: refused before any job, naming the key and the part ---------------

def _without_llama_cpp(folder: Path) -> dict:
    """An environment whose Python cannot import llama_cpp, as one without llama-cpp-python: a sitecustomize
    on PYTHONPATH marks the module absent (sys.modules[name] = None: import raises, find_spec says None)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text('import sys\nsys.modules["llama_cpp"] = None\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def _refused(result: subprocess.CompletedProcess, workdir: Path) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "invalid workflow config" in output, output[-2000:]
    assert not any((workdir / name).exists() for name in ("results", "resources", "logs"))
    return output


def test_gguf_and_llama_cpp_speed_refused_without_llama_cpp(tmp_path):
    config = {**TINY_CONFIG, "gguf": {"outtypes": ["f16", "q4_k_m"]},
              "speed": {"enabled": True, "gguf_outtype": "q4_k_m"}}
    env = _without_llama_cpp(tmp_path / "no-llama-cpp")
    blocked = subprocess.run([PYTHON, "-c", "import importlib.util; print(importlib.util.find_spec('llama_cpp'))"],
                             env=env, capture_output=True, text=True)
    assert blocked.stdout.strip() == "None"
    output = _refused(snakemake(tmp_path / "run", "-n", "--cores", "1", config=config, env=env), tmp_path / "run")
    needs = f"which needs llama-cpp-python: {PYTHON} cannot import it (bash scripts/setup.sh installs it)"
    assert f"config.gguf.outtypes[0]: 'f16' is evaluated in llama.cpp, as every GGUF file of the grid (gguf_eval), {needs}" in output
    assert f"config.gguf.outtypes[1]: 'q4_k_m' is made by llama.cpp's quantizer and evaluated in llama.cpp, {needs}" in output
    assert "config.speed.gguf_outtype: timing 'q4_k_m' in llama.cpp needs llama-cpp-python" in output
    # without a GGUF section nothing needs it
    plain = snakemake(tmp_path / "plain", "-n", "--cores", "1", config=TINY_CONFIG, env=env)
    assert plain.returncode == 0, plain.stderr[-2000:]


def test_cuda_device_refused_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device cuda is accepted here")
    output = _refused(snakemake(tmp_path, "-n", "--cores", "1", config={**TINY_CONFIG, "device": "cuda"}), tmp_path)
    assert f"config.device: 'cuda' needs CUDA, which torch {torch.__version__} here has not" in output
    # submitted to a cluster (--jobs), the jobs run on its nodes: not checked on this host
    # (test_resources_from_the_rules_through_the_slurm_profile plans device cuda through profiles/slurm)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_online_only_task_refused_offline(tmp_path, variable):
    """mmlu has no local copy: offline it is refused; arc_easy (a local copy in data_dir) is not."""
    config = {**TINY_CONFIG, "zeroshot": {"tasks": ["arc_easy", "mmlu"]}}
    online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    output = _refused(snakemake(tmp_path, "-n", "--cores", "1", config=config, env={**online, variable: "1"}),
                      tmp_path)
    assert (f"config.zeroshot.tasks[1]: 'mmlu' has no local copy in {DATA_DIR}, so its documents come from the "
            f"Hugging Face hub, and {variable} is set (offline)") in output
    assert "config.zeroshot.tasks[0]" not in output
    if variable == "HF_HUB_OFFLINE":  # online, the same config plans its jobs
        result = snakemake(tmp_path, "-n", "--cores", "1", config=config, env=online)
        assert result.returncode == 0, result.stderr[-2000:]
        assert job_counts(result.stdout)["zeroshot"] == 2 * len(TINY_ROWS)


def test_online_only_task_skipped_offline_when_the_config_says_so(tmp_path):
    """`offline_hub_tasks: skip` (config/prunegpt.yaml): offline, mmlu gets no jobs and one warning line names
    it and why; its shots leave the map; the local tasks are planned as usual."""
    config = {**TINY_CONFIG, "zeroshot": {"tasks": ["arc_easy", "mmlu"], "num_fewshot": {"mmlu": 5},
                                          "offline_hub_tasks": "skip"}}
    result = snakemake(tmp_path, "-n", "--cores", "1", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("zero-shot tasks left out, HF_HUB_OFFLINE is set: mmlu (no local copy in data_dir)"
            in result.stdout + result.stderr)
    assert job_counts(result.stdout)["zeroshot"] == len(TINY_ROWS)
    assert "zeroshot-mmlu" not in result.stdout


def test_prunegpt_config_plans_its_document_tasks_and_shots(tmp_path):
    """config/prunegpt.yaml as written (offline here): PruneGPT's tasks with its shots on three rows, MMLU left
    out with its reason, every other task's jobs planned."""
    config = yaml.safe_load((REPO / "config" / "prunegpt.yaml").read_text())
    config.update(run_dir=None, data_dir=str(DATA_DIR))
    result = snakemake(tmp_path, "-n", "-p", "--cores", "2", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zero-shot tasks left out, HF_HUB_OFFLINE is set: mmlu" in result.stdout + result.stderr
    assert job_counts(result.stdout)["zeroshot"] == 3 * 5
    shots = {(c[c.index("--task") + 1], c[c.index("--num-fewshot") + 1] if "--num-fewshot" in c else "0")
             for c in pruning_commands(result.stdout) if c[0] == "zeroshot"}
    assert shots == {("winogrande", "5"), ("boolq", "0"), ("hellaswag", "10"), ("arc_challenge", "25"), ("gsm8k", "5")}


# ---- a tiny real run: killed mid-way, resumed with --rerun-incomplete, ends in the tables ---------------

def _metric_files(workdir: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((workdir / "results" / "metrics").rglob("*.json"))}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny grid run locally: SIGKILL to the whole run once the first pruned model is evaluated while
    other jobs are running, then `--rerun-incomplete` to the end."""
    workdir = tmp_path_factory.mktemp("tiny-local")
    command = snakemake_command(workdir, ["--cores", "2"], TINY_CONFIG)
    log = open(workdir / "first-attempt.log", "w")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = workdir / "results" / "metrics" / "stories260K"
    incomplete = workdir / ".snakemake" / "incomplete"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        finished = list(metrics.glob("*/*/ppl.json"))
        if any(p.parent.parent.name != "dense" for p in finished) and any(incomplete.glob("*")):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    # outputs of the jobs that were running (Snakemake's markers: base64 of the output path); a job may have
    # written its file already without Snakemake having recorded it as finished
    markers = {base64.urlsafe_b64decode(p.name).decode() for p in incomplete.glob("*") if not p.name.startswith("@")}
    before = {p: v for p, v in _metric_files(workdir).items() if str(p.relative_to(workdir)) not in markers}
    # a killed Snakemake leaves its lock behind: release it, then redo the interrupted jobs
    unlocked = snakemake(workdir, "--unlock", config=TINY_CONFIG, timeout=300)
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]
    resumed = snakemake(workdir, "--cores", "2", "--rerun-incomplete", config=TINY_CONFIG, timeout=600)
    return {"workdir": workdir, "before": before, "markers": markers, "resumed": resumed,
            "seconds": time.perf_counter() - started}


def test_interrupted_run_finishes_with_rerun_incomplete(tiny_run):
    resumed = tiny_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    workdir = tiny_run["workdir"]
    assert tiny_run["markers"], "jobs were running when the run was killed"
    assert tiny_run["before"], "some results were finished before the kill"
    after = _metric_files(workdir)
    for path, (content, mtime) in tiny_run["before"].items():
        assert after[path] == (content, mtime), f"{path} was redone or changed by the resumed run"
    redone = [line for line in tiny_run["resumed"].stderr.splitlines() if line.strip().startswith("output:")]
    for output in tiny_run["markers"]:  # every interrupted job ran again
        assert any(output in line for line in redone), output
    assert len(after) == len(TINY_ROWS) + 4  # ppl.json per row, prune.json per pruned row
    assert len(after) > len(tiny_run["before"])
    assert not list((tiny_run["workdir"] / ".snakemake" / "incomplete").glob("*"))


def test_tiny_run_tables(tiny_run):
    workdir = tiny_run["workdir"]
    assert tiny_run["resumed"].returncode == 0, tiny_run["resumed"].stderr[-3000:]
    tables, plots = workdir / "results" / "tables", workdir / "results" / "plots"
    assert sorted(p.name for p in tables.iterdir() if not p.name.startswith(".")) == sorted(  # not the manifest
        f"{name}.{suffix}" for name in ("comparison", "impact", "sparsity-stories260K", "summary")
        for suffix in ("csv", "md"))
    assert [p.name for p in plots.iterdir()] == ["sparsity-stories260K.png"]
    assert (plots / "sparsity-stories260K.png").read_bytes()[:4] == b"\x89PNG"
    ppl = {(m, r): read_json(workdir / f"results/metrics/stories260K/{m}/{r}/ppl.json")["ppl"] for m, r in TINY_ROWS}
    assert all(ppl[("dense", "base")] < value for key, value in ppl.items() if key[0] != "dense")

    markdown = (tables / "sparsity-stories260K.md").read_text().splitlines()
    assert markdown[2].startswith("Protocol: WikiText-2 test token-level perplexity, non-overlapping windows of 128 "
                                  "tokens (first 8 windows: 8 windows")
    assert "Calibration: c4, 8 × 64 tokens, seed 0 (magnitude: no data)" in markdown[2]
    assert f"Note on stories260K: {STORIES_NOTE}." in markdown[2]
    header = [c.strip() for c in markdown[4].strip("|").split("|")]
    assert header == ["method", "dense", "50%", "2:4"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][1:] for line in markdown[6:]}
    from pruning.core.statistics import paired_perplexity, perplexity_estimate

    windows = {key: read_json(workdir / f"results/metrics/stories260K/{key[0]}/{key[1]}/ppl.json")["per_window"]
               for key in TINY_ROWS}

    def cell(key) -> str:  # PPL ± its SE over the 8 windows, ≈ when within 2 paired SE of dense
        se = perplexity_estimate(windows[key]["nll"], windows[key]["scored_tokens"]).se
        paired = paired_perplexity(windows[key]["nll"], windows[("dense", "base")]["nll"], windows[key]["scored_tokens"])
        close = key != ("dense", "base") and paired.indistinguishable
        return f"{ppl[key]:.2f} ± {se:.2f}" + (" ≈" if close else "")

    assert rows == {m: [cell(("dense", "base")), cell((m, "s0.50")), cell((m, "nm2-4"))] for m in ("magnitude", "wanda")}
    assert "Smoke run, large uncertainty: the standard error of a perplexity" in markdown[2]  # 8 windows < 64

    import pandas as pd

    cells = pd.read_csv(tables / "sparsity-stories260K.csv")  # long form: one row per number, with its file
    cells = cells[cells.metric == "ppl"]
    assert list(zip(cells.method, cells.ratio)) == TINY_ROWS
    for record in cells.itertuples():
        assert record.file == f"results/metrics/stories260K/{record.method}/{record.ratio}/ppl.json"
        assert float(record.value) == read_json(workdir / record.file)["ppl"]
    summary = pd.read_csv(tables / "summary.csv")
    nonzero = summary[summary.metric == "parameters.nonzero"]
    assert list(zip(nonzero.method, nonzero.ratio)) == TINY_ROWS
    assert [int(v) for v in nonzero.value] == [read_json(workdir / f)["parameters"]["nonzero"] for f in nonzero.file]
    # pruned model directories are temp() when keep_models is false; their prune.json copies stay
    assert not list((workdir / "results" / "models").glob("*/*/*"))
    assert (workdir / "results/metrics/stories260K/wanda/nm2-4/prune.json").is_file()


def test_tables_cli_reproduces_workflow_tables(tiny_run, tmp_path):
    workdir = tiny_run["workdir"]
    result = subprocess.run([PYTHON, "-m", "pruning", "tables", "--results", "results", "--out", str(tmp_path),
                             "--note", f"stories260K={STORIES_NOTE}"], cwd=workdir, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("summary.md", "sparsity-stories260K.md", "sparsity-stories260K.csv"):
        assert (tmp_path / name).read_bytes() == (workdir / "results" / "tables" / name).read_bytes(), name


def test_report_builds(tiny_run):
    workdir = tiny_run["workdir"]
    result = snakemake(workdir, "--report", "report.html", config=TINY_CONFIG, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    assert "sparsity-stories260K" in html


def test_publish_copies_the_checked_tables(tiny_run):
    """`snakemake publish` on a finished run: only the publish job runs, the published folders become exactly
    this run's tables and plots (a stale table of another grid goes); a file that is not a table or plot in
    them is refused, naming it, and nothing is replaced."""
    workdir = tiny_run["workdir"]
    assert tiny_run["resumed"].returncode == 0
    published = workdir / "results" / "published"
    (published / "tables").mkdir(parents=True)
    (published / "tables" / "depth-old-grid.md").write_text("| a table of an older grid |\n")
    result = snakemake(workdir, "--cores", "1", "publish", config=TINY_CONFIG, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout + result.stderr) == {"publish": 1, "total": 1}
    for kind in ("tables", "plots"):
        made = {p.name: p.read_bytes() for p in (workdir / "results" / kind).iterdir()
                if not p.name.startswith(".")}  # the tables' manifest of what they wrote stays with the run
        assert {p.name: p.read_bytes() for p in (published / kind).iterdir()} == made, kind
    assert len(list((published / "tables").iterdir())) == 8

    (published / "plots" / "notes.txt").write_text("someone's notes\n")
    before = {p: p.read_bytes() for p in published.rglob("*") if p.is_file()}
    result = snakemake(workdir, "--cores", "1", "publish", config=TINY_CONFIG, timeout=300)
    assert result.returncode != 0
    log = (workdir / "logs" / "publish.log").read_text()
    assert "publish: refused, nothing replaced" in log
    assert "results/published/plots/notes.txt: not a table or plot, would be deleted; move it away first" in log
    assert {p: p.read_bytes() for p in published.rglob("*") if p.is_file()} == before


def test_publish_replaces_tables_and_plots_together(tmp_path, monkeypatch):
    """The published tables and plots never come from two runs: when the second folder cannot be swapped in,
    the first one gets its old files back (workflow/scripts/publish.py's `replace_folders`, imported)."""
    import importlib.util
    from contextlib import contextmanager

    spec = importlib.util.spec_from_file_location("publish_script", REPO / "workflow" / "scripts" / "publish.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    new, published = tmp_path / "new", tmp_path / "published"
    for folder, names in ((new, ("sparsity.md", "curve.png")), (published / "tables", ("old.md",)),
                          (published / "plots", ("old.png",))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text(f"{folder.name}/{name}")
    contents = {published / "tables": [new / "sparsity.md"], published / "plots": [new / "curve.png"]}
    old = {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()}
    real = publish.atomic_directory

    @contextmanager
    def tables_swap_fails(dest, **kwargs):  # the plots (entered last) are swapped first, then this fails
        with real(dest, **kwargs) as scratch:
            yield scratch
            if dest.name == "tables":
                raise OSError("No space left on device")

    monkeypatch.setattr(publish, "atomic_directory", tables_swap_fails)
    with pytest.raises(OSError, match="No space left"):
        publish.replace_folders(contents)
    assert {p.relative_to(published): p.read_bytes() for p in published.rglob("*") if p.is_file()} == old
    assert sorted(p.name for p in published.iterdir()) == ["plots", "tables"]  # no scratch left behind
    monkeypatch.setattr(publish, "atomic_directory", real)
    publish.replace_folders(contents)
    assert {str(p.relative_to(published)) for p in published.rglob("*") if p.is_file()} == \
        {"tables/sparsity.md", "plots/curve.png"}


# ---- the same tiny run through sbatch on a real single-node Slurm -------------------------------------

CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.fail("the Slurm test needs root: tests/slurm/cluster.sh installs slurm-wlm and starts slurmctld/slurmd")
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(f"could not start the single-node Slurm (tests/slurm/cluster.sh start):\n{started.stderr[-3000:]}")
    print(started.stdout)
    yield
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def slurm_test_profile(folder: Path) -> Path:
    """profiles/slurm with its placeholders set for the test cluster and memory requests that fit it."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_account"] == "your-account"
    profile["default-resources"].update(slurm_account="root", slurm_partition="debug")
    # the test node has 8000 MB: every submitted job asks for 1000 (the rules ask for 16-32 GB)
    profile["set-resources"] = {rule: {"mem_mb": 1000} for rule in
                                ("prune", "perplexity", "zeroshot", "gguf_convert", "gguf_eval", "speed")}
    profile["slurm-init-seconds-before-status-checks"] = 2
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


@pytest.mark.slurm
def test_slurm_run_matches_local_run(slurm_cluster, tiny_run, tmp_path):
    assert tiny_run["resumed"].returncode == 0
    workdir = tmp_path / "tiny-slurm"
    config = {**TINY_CONFIG, "gpus_per_job": 1}  # request the fake GPUs: the jobs themselves run on CPU
    profile = slurm_test_profile(tmp_path / "profile")
    started = time.perf_counter()
    result = snakemake(workdir, "--workflow-profile", str(profile), config=config, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"slurm run: {seconds:.0f} s")

    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr)
    assert len(submitted) == len(TINY_ROWS) + 4  # perplexity per row + prune per pruned row; the rest are local
    for job in submitted:
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in info, info
        assert f"WorkDir={workdir}" in info
        assert "TresPerJob=gres:gpu:1" in info

    local = tiny_run["workdir"] / "results" / "metrics"
    remote = workdir / "results" / "metrics"
    for method, ratio in TINY_ROWS:
        a, b = read_json(local / f"stories260K/{method}/{ratio}/ppl.json"), read_json(remote / f"stories260K/{method}/{ratio}/ppl.json")
        assert (a["ppl"], a["scored_tokens"], a["parameters"]) == (b["ppl"], b["scored_tokens"], b["parameters"])
        if method != "dense":
            a, b = (read_json(p / f"stories260K/{method}/{ratio}/prune.json") for p in (local, remote))
            assert a["result"]["per_layer"] == b["result"]["per_layer"]
            assert a["result"]["total_sparsity"] == b["result"]["total_sparsity"]
            assert a["parameters"] == b["parameters"]
    for name in ("sparsity-stories260K.md", "summary.md"):
        assert (workdir / "results/tables" / name).read_bytes() == \
            (tiny_run["workdir"] / "results/tables" / name).read_bytes()
