"""Inputs are what is read, not what is typed (issue 23, items 1, 2, 3 and 5): a calibration source "c4" is the
C4 file in the data directory, "wikitext2" its WikiText-2 split, a teacher is its model directory, a job file and
a task's documents are read too; no output of any command (result directory, JSON, GGUF, table, plot, log) may
be, contain or lie inside any of them. Each case is refused before any weight loads, in one line, exit code 2,
with nothing on disk changed; outputs beside the inputs are still accepted."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from .hostile_harness import assert_refused, copy_model, run_cli, run_in_process, snapshot
from pruning import cli
from pruning.core import data
from pruning.core.inputs import read_paths

REPO = Path(__file__).resolve().parents[2]
C4 = "{D}/c4/c4-train.00000-of-01024.first1000.jsonl"
TEST = "{D}/wikitext-2-raw-v1/wiki.test.raw"
VALID = "{D}/wikitext-2-raw-v1/wiki.valid.raw"
M = "{root}/mlog"
TEXT = "Once upon a time there was a little dog called Tim.\n\nThe dog sat in the sun and was happy.\n" * 60


@pytest.fixture(scope="module")
def reads(stories_dir, shared_data_dir, tmp_path_factory):
    """A folder of everything a command may read: the model (`mlog`, as the issue names it), a copy of the data
    directory (`D`), a teacher inside `tp/`, text files, a GGUF file, the Quark job file at its repository
    path, and the metric files of a real dense and a real magnitude run (for tables and plots), with a user's
    own plot where the sparsity plot goes."""
    import pruning

    root = tmp_path_factory.mktemp("reads").resolve()
    copy_model(stories_dir, root / "mlog")
    copy_model(stories_dir, root / "tp" / "teacher")
    shutil.copytree(shared_data_dir, root / "D")
    (root / "text.txt").write_text(TEXT)
    (root / "eval.txt").write_text(TEXT)
    (root / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (root / "config" / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "config" / "jobs" / "quark.yaml", root / "config" / "jobs" / "quark.yaml")
    (root / "logs").mkdir()
    metrics = root / "results" / "metrics" / "stories260K"
    settings = dict(dataset=str(root / "eval.txt"), seqlen=32, max_windows=2, device="cpu")
    pruning.evaluate_perplexity(str(stories_dir), output=str(metrics / "dense/base/ppl.json"), **settings)
    pruned = root / "pruned"
    pruning.prune(str(stories_dir), "magnitude", pruned, sparsity=0.5, device="cpu", progress=False)
    (metrics / "magnitude" / "s0.50").mkdir(parents=True)
    shutil.copy(pruned / "prune.json", metrics / "magnitude" / "s0.50" / "prune.json")
    pruning.evaluate_perplexity(str(pruned), output=str(metrics / "magnitude/s0.50/ppl.json"), **settings)
    (root / "P").mkdir()
    (root / "P" / "sparsity-stories260K.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"a user's own figure")
    return root


PRUNE = ["prune", "--model", M, "--device", "cpu", "--quiet"]
MAGNITUDE = PRUNE + ["--method", "magnitude", "--sparsity", "0.5"]
WANDA = PRUNE + ["--method", "wanda", "--sparsity", "0.5", "--nsamples", "2", "--seqlen", "32"]
OWN_CALIB = ["--calib", "{root}/text.txt"]
DISTILL = PRUNE + ["--method", "distill", "--option", "base_method=magnitude", "--sparsity", "0.5"]
EVAL = ["eval", "--model", M, "--ppl", "--seqlen", "32", "--max-windows", "1", "--device", "cpu"]
ZEROSHOT = ["zeroshot", "--model", M, "--device", "cpu", "--limit", "2"]
GGUF_EVAL = ["gguf-eval", "--gguf", "{root}/m.gguf", "--model", M, "--seqlen", "32"]
RUN = ["run", "config/jobs/quark.yaml", "--model", "mlog", "--device", "cpu", "--nsamples", "2", "--seqlen", "32"]
TABLES = ["tables", "--results", "{root}/results"]

CASES = {
    # item 1 as the issue writes it: the calibration source c4 is the C4 file inside D
    "item1-prune-replaces-the-data-dir": (
        MAGNITUDE + ["--data-dir", "{D}", "--output-dir", "{D}", "--overwrite"],
        f"output directory {{D}} contains the input {C4}; replacing it would delete that input"),
    "prune-calibration-folder-in-data-dir": (WANDA + ["--calib", "c4", "--data-dir", "{D}", "--output-dir", "{D}/c4",
                                                      "--overwrite"], f"output directory {{D}}/c4 contains the input {C4}"),
    "prune-output-is-the-calibration-file": (WANDA + ["--calib", "c4", "--data-dir", "{D}", "--output-dir", C4,
                                                      "--overwrite"], f"output directory {C4} is the input {C4}"),
    "prune-output-under-the-calibration-file": (WANDA + ["--calib", "c4", "--data-dir", "{D}", "--output-dir",
                                                         C4 + "/out"], f"is inside the input {C4}"),
    "prune-validation-calibration": (WANDA + ["--calib", "wikitext2-validation", "--data-dir", "{D}", "--output-dir",
                                              "{D}/wikitext-2-raw-v1", "--overwrite"], f"contains the input {VALID}"),
    "prune-magnitude-calibration-counts-too": (MAGNITUDE + ["--calib", "wikitext2-validation", "--data-dir", "{D}",
                                                            "--output-dir", "{D}/wikitext-2-raw-v1", "--overwrite"],
                                               f"contains the input {VALID}"),
    # prune --evaluate: the evaluation split through the data directory
    "prune-evaluate-split-folder": (MAGNITUDE + OWN_CALIB + ["--evaluate", "--eval-seqlen", "32", "--data-dir", "{D}",
                                                             "--output-dir", "{D}/wikitext-2-raw-v1", "--overwrite"],
                                    f"output directory {{D}}/wikitext-2-raw-v1 contains the input {TEST}"),
    "prune-evaluate-output-is-test-file": (MAGNITUDE + OWN_CALIB + ["--evaluate", "--eval-seqlen", "32", "--data-dir",
                                                                    "{D}", "--output-dir", TEST, "--overwrite"],
                                           f"output directory {TEST} is the input {TEST}"),
    "prune-evaluate-own-dataset": (MAGNITUDE + OWN_CALIB + ["--evaluate", "--dataset", "{root}/eval.txt",
                                                            "--eval-seqlen", "32", "--output-dir", "{root}/eval.txt",
                                                            "--overwrite"], "is the input {root}/eval.txt"),
    # recovery data (given, and the default c4), and a method's own recovery text
    "prune-recovery-data": (MAGNITUDE + OWN_CALIB + ["--recover-steps", "1", "--recover-data", "wikitext2-validation",
                                                     "--data-dir", "{D}", "--output-dir", "{D}/wikitext-2-raw-v1",
                                                     "--overwrite"], f"contains the input {VALID}"),
    "prune-recovery-default-data": (MAGNITUDE + OWN_CALIB + ["--recover-steps", "1", "--data-dir", "{D}",
                                                             "--output-dir", "{D}/c4", "--overwrite"],
                                    f"contains the input {C4}"),
    "prune-iterative-recover-data": (PRUNE + ["--method", "iterative", "--option", "base_method=magnitude",
                                              "--sparsity", "0.5"] + OWN_CALIB + ["--data-dir", "{D}", "--output-dir",
                                                                                  "{D}/c4", "--overwrite"],
                                     f"contains the input {C4}"),
    # distillation: the teacher model and the training text
    "prune-distill-into-teacher": (DISTILL + ["--training-data", "{root}/text.txt", "--teacher-model",
                                              "{root}/tp/teacher", "--output-dir", "{root}/tp/teacher", "--overwrite"],
                                   "output directory {root}/tp/teacher is the input {root}/tp/teacher"),
    "prune-distill-teacher-parent": (DISTILL + ["--training-data", "{root}/text.txt", "--teacher-model",
                                                "{root}/tp/teacher", "--output-dir", "{root}/tp", "--overwrite"],
                                     "output directory {root}/tp contains the input {root}/tp/teacher"),
    "prune-distill-inside-teacher": (DISTILL + ["--training-data", "{root}/text.txt", "--teacher-model",
                                                "{root}/tp/teacher", "--output-dir", "{root}/tp/teacher/student"],
                                     "is inside the input {root}/tp/teacher"),
    "prune-distill-training-data-in-data-dir": (DISTILL + OWN_CALIB + ["--training-data", "wikitext2-validation",
                                                                       "--data-dir", "{D}", "--output-dir",
                                                                       "{D}/wikitext-2-raw-v1", "--overwrite"],
                                                f"contains the input {VALID}"),
    "prune-distillation-training-file": (PRUNE + ["--method", "distillation", "--training-data", "{root}/text.txt",
                                                  "--output-dir", "{root}/text.txt", "--overwrite"],
                                         "output directory {root}/text.txt is the input {root}/text.txt"),
    # item 2 as the issue writes it, and eval's other reads
    "item2-eval-replaces-the-file-it-read": (
        EVAL + ["--data-dir", "{D}", "--output", TEST, "--overwrite"], f"output {TEST} is the input {TEST}; choose another path"),
    "eval-validation-split": (EVAL + ["--split", "validation", "--data-dir", "{D}", "--output", VALID, "--overwrite"],
                              f"output {VALID} is the input {VALID}"),
    "eval-output-under-the-test-file": (EVAL + ["--data-dir", "{D}", "--output", TEST + "/ppl.json"],
                                        f"is inside the input {TEST}"),
    "eval-own-dataset": (EVAL + ["--dataset", "{root}/eval.txt", "--output", "{root}/eval.txt", "--overwrite"],
                         "output {root}/eval.txt is the input {root}/eval.txt"),
    "eval-model-config": (EVAL + ["--dataset", "{root}/eval.txt", "--output", M + "/config.json", "--overwrite"],
                          f"output {M}/config.json is inside the input {M}"),
    # zero-shot: the task's documents in the data directory
    "zeroshot-task-documents": (ZEROSHOT + ["--task", "arc_easy", "--data-dir", "{D}", "--output",
                                            "{D}/zeroshot/arc_easy.jsonl", "--overwrite"],
                                "output {D}/zeroshot/arc_easy.jsonl is the input {D}/zeroshot/arc_easy.jsonl"),
    "zeroshot-task-documents-folder": (ZEROSHOT + ["--task", "piqa_local", "--data-dir", "{D}", "--output",
                                                   "{D}/zeroshot/piqa-hf/z.json"],
                                       "is inside the input {D}/zeroshot/piqa-hf"),
    # gguf-eval: its GGUF file and its evaluation text through the data directory
    "gguf-eval-test-file": (GGUF_EVAL + ["--data-dir", "{D}", "--output", TEST, "--overwrite"],
                            f"output {TEST} is the input {TEST}"),
    "gguf-eval-own-dataset": (GGUF_EVAL + ["--dataset", "{root}/eval.txt", "--output", "{root}/eval.txt", "--overwrite"],
                              "is the input {root}/eval.txt"),
    "gguf-eval-the-gguf-file": (GGUF_EVAL + ["--output", "{root}/m.gguf", "--overwrite"], "is the input {root}/m.gguf"),
    # speed, convert, optimize: the model and the GGUF file
    "speed-the-gguf-file": (["speed", "--model", M, "--gguf", "{root}/m.gguf", "--output", "{root}/m.gguf",
                             "--overwrite", "--device", "cpu"], "output {root}/m.gguf is the input {root}/m.gguf"),
    "speed-inside-model": (["speed", "--model", M, "--output", M + "/speed.json", "--device", "cpu"],
                           f"is inside the input {M}"),
    "convert-inside-model": (["convert", "--model", M, "--outtype", "f16", "--output", M + "/model.gguf"],
                             f"output {M}/model.gguf is inside the input {M}"),
    "convert-report-over-model-config": (["convert", "--model", M, "--outtype", "f16", "--output", "{root}/new.gguf",
                                          "--report", M + "/config.json", "--overwrite"],
                                         f"report {M}/config.json is inside the input {M}"),
    "optimize-inside-model": (["optimize", "--model", M, "--quantization", "8bit", "--output", M + "/m.gguf"],
                              f"is inside the input {M}"),
    # fetch-model --dest
    "fetch-model-dest-holds-the-source": (["fetch-model", "{root}/tp/teacher", "--dest", "{root}/tp"],
                                          "--dest {root}/tp contains the input {root}/tp/teacher"),
    "fetch-model-dest-inside-the-source": (["fetch-model", M, "--dest", M + "/copy"], f"is inside the input {M}"),
    # item 5 as the issue writes it, and every other place a log file must not go
    "item5-run-log-into-the-model-config": (RUN + ["--output-dir", "{root}/out", "--log-file", "mlog/config.json"],
                                            "log file mlog/config.json is inside the input {root}/mlog"),
    "run-log-is-the-job-file": (RUN + ["--output-dir", "{root}/out", "--log-file", "config/jobs/quark.yaml"],
                                "log file config/jobs/quark.yaml is the input {root}/config/jobs/quark.yaml"),
    "run-log-is-the-calibration-file": (RUN + ["--data-dir", "{D}", "--output-dir", "{root}/out", "--log-file", VALID],
                                        f"log file {VALID} is the input {VALID}"),
    "run-log-inside-the-output-dir": (RUN + ["--output-dir", "{root}/out", "--log-file", "{root}/out/run.log"],
                                      "log file {root}/out/run.log is inside the output directory {root}/out, which "
                                      "the run replaces"),
    "run-log-is-the-output-dir": (RUN + ["--output-dir", "{root}/out", "--log-file", "{root}/out"],
                                  "log file {root}/out is the output directory {root}/out"),
    "run-log-would-hold-the-output-dir": (RUN + ["--output-dir", "{root}/out/model", "--log-file", "{root}/out"],
                                          "log file {root}/out would hold the output directory {root}/out/model"),
    "run-log-is-a-directory": (RUN + ["--output-dir", "{root}/out", "--log-file", "{root}/logs"],
                               "log file {root}/logs is a directory"),
    "run-output-dir-is-the-data-dir": (RUN + ["--data-dir", "{D}", "--output-dir", "{D}", "--overwrite", "--log-file",
                                              "{root}/logs/run.log"], f"output directory {{D}} contains the input {VALID}"),
    "run-output-dir-is-the-job-folder": (RUN + ["--output-dir", "config", "--overwrite"],
                                         "output directory config contains the input {root}/config/jobs/quark.yaml"),
    # item 3 as the issue writes it, and tables or plots among the metric files they read
    "item3-tables-replace-a-users-plot": (TABLES + ["--out", "{root}/T", "--plots", "{root}/P"],
                                          "plot {root}/P/sparsity-stories260K.png exists and was not written by this "
                                          "tool"),
    "tables-plots-among-the-metrics": (TABLES + ["--out", "{root}/T", "--plots", "{root}/results/metrics/plots"],
                                       "plot {root}/results/metrics/plots/sparsity-stories260K.png is inside the input "
                                       "{root}/results/metrics"),
    "tables-among-the-metrics": (TABLES + ["--out", "{root}/results/metrics/stories260K"],
                                 "is inside the input {root}/results/metrics"),
}


def test_the_table_covers_every_writing_command():
    commands = {argv[0] for argv, _ in CASES.values()}
    assert len(CASES) >= 40
    assert commands == {"prune", "eval", "zeroshot", "gguf-eval", "speed", "convert", "optimize", "fetch-model", "run",
                        "tables"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_output_over_what_is_read_is_refused(name, reads, capfd, monkeypatch, no_weights):
    argv, expected = CASES[name]
    values = {"root": reads, "D": reads / "D"}
    monkeypatch.chdir(reads)
    before = snapshot(reads)
    outcome = run_in_process(capfd, [arg.format(**values) for arg in argv])
    assert_refused(outcome, expected.format(**values), before=before, root=reads)


def test_the_data_dir_from_the_environment_resolves_the_same(reads, capfd, monkeypatch, no_weights):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(reads / "D"))
    monkeypatch.chdir(reads)
    before = snapshot(reads)
    outcome = run_in_process(capfd, ["prune", "--model", "mlog", "--method", "magnitude", "--sparsity", "0.5",
                                     "--output-dir", "D", "--overwrite"])
    assert_refused(outcome, f"output directory D contains the input {C4.format(D=reads / 'D')}", before=before,
                   root=reads)


# ------------------------------------------------------------------------------------------ one resolution

def test_read_paths_resolve_names_through_the_data_directory(reads):
    D = reads / "D"
    assert read_paths(calibration=["c4", "wikitext2-validation", "wikitext2-train"], data_dir=D) == [
        Path(C4.format(D=D)), Path(VALID.format(D=D))]  # no train split in the layout: nothing read there
    assert read_paths(evaluation=["wikitext2", ("wikitext2", "validation")], data_dir=D) == [
        Path(TEST.format(D=D)), Path(VALID.format(D=D))]
    assert read_paths(calibration=["c4"], evaluation=["wikitext2"], data_dir=reads / "nothing") == []
    assert read_paths(models=["mlog-missing", reads / "mlog", None], files=[reads / "m.gguf", reads / "none.txt"]) == [
        reads / "mlog", reads / "m.gguf"]


def test_the_loaders_read_exactly_the_files_read_paths_names(reads, monkeypatch):
    """The resolution is the loaders' own: every file calibration and evaluation text is read from is one that
    read_paths names for the same source, and the other way round."""
    D = reads / "D"
    opened = []
    original = Path.read_text

    def spy(path, *args, **kwargs):
        opened.append(path.resolve())
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", spy)
    real_open = open

    def open_spy(file, *args, **kwargs):
        opened.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_spy)
    for source in ("c4", "wikitext2-validation", str(reads / "text.txt")):
        opened.clear()
        data.calibration_documents(source, D)
        assert set(opened) == set(read_paths(calibration=[source], data_dir=D)), source
    for dataset, split in (("wikitext2", "test"), ("wikitext2", "validation"), (str(reads / "eval.txt"), "test")):
        opened.clear()
        data.evaluation_text(dataset, split, D)
        assert set(opened) == set(read_paths(evaluation=[(dataset, split)], data_dir=D)), dataset


# ------------------------------------------------------------------------------------------ still accepted

ACCEPTED = {  # request keywords, {root} and {D} filled in: outputs next to what is read, never over it
    "prune-result-inside-the-data-dir": dict(method="magnitude", options={"sparsity": 0.5}, output_dir="{D}/pruned"),
    "prune-result-beside-the-calibration-file": dict(method="wanda", options={"sparsity": 0.5},
                                                     output_dir="{D}/c4-pruned"),
    "eval-result-beside-the-test-file": dict(calibration=None, evaluation=("wikitext2", "test"),
                                             output_file="{D}/wikitext-2-raw-v1/ppl.json"),
    "distill-result-beside-the-teacher": dict(method="distill", options={"base_method": "magnitude", "sparsity": 0.5,
                                                                         "training_data": "{root}/text.txt",
                                                                         "teacher_model": "{root}/tp/teacher"},
                                              output_dir="{root}/tp/student"),
    "log-beside-the-model-and-the-result": dict(method="magnitude", options={"sparsity": 0.5},
                                                output_dir="{root}/out", log_file="{root}/out.log",
                                                files=("{root}/config/jobs/quark.yaml",)),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_an_output_beside_what_is_read_is_accepted(name, reads, no_weights):
    from pruning.core.protocols import Calibration, Evaluation
    from pruning.preflight import RunRequest, problems

    def fill(value):
        if isinstance(value, str):
            return value.format(root=reads, D=reads / "D")
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return tuple(map(fill, value)) if isinstance(value, tuple) else value

    keywords = {"calibration": Calibration("c4", nsamples=4, seqlen=32), **fill(ACCEPTED[name])}
    if "evaluation" in keywords:
        keywords["evaluation"] = Evaluation(*keywords["evaluation"], seqlen=32)
    before = snapshot(reads)
    assert problems(RunRequest(str(reads / "mlog"), device="cpu", data_dir=str(reads / "D"), **keywords)) == []
    assert snapshot(reads) == before


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_outputs_beside_the_inputs_are_accepted(reads, shared_data_dir, tmp_path, capfd, monkeypatch):
    """Only what is read is protected: a result next to the data files, even inside the data directory, is
    written, and the files read are unchanged."""
    D = tmp_path / "D"
    (D / "c4").mkdir(parents=True)
    shutil.copytree(shared_data_dir / "wikitext-2-raw-v1", D / "wikitext-2-raw-v1")
    shutil.copy(Path(C4.format(D=shared_data_dir)), D / "c4")
    before = {path: digest(path) for path in D.rglob("*") if path.is_file()}
    model = reads / "mlog"
    code = cli.main(["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5", "--data-dir",
                     str(D), "--evaluate", "--eval-seqlen", "32", "--max-windows", "1", "--output-dir",
                     str(D / "pruned"), "--device", "cpu", "--quiet"])
    assert code == 0, capfd.readouterr().err
    assert (D / "pruned" / "prune.json").is_file()
    code = cli.main(["eval", "--model", str(D / "pruned"), "--ppl", "--seqlen", "32", "--max-windows", "1",
                     "--data-dir", str(D), "--output", str(D / "wikitext-2-raw-v1" / "ppl.json"), "--device", "cpu"])
    assert code == 0, capfd.readouterr().err
    assert json.loads((D / "wikitext-2-raw-v1" / "ppl.json").read_text())["split"] == "test"
    assert {path: digest(path) for path in before} == before


@pytest.mark.slow
def test_a_log_file_beside_the_inputs_is_written_once_the_checks_pass(reads, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(reads)
    config = digest(reads / "mlog" / "config.json")
    log = tmp_path / "logs" / "quark.log"
    code = cli.main(RUN + ["--output-dir", str(tmp_path / "out"), "--log-file", str(log), "--quiet"])
    assert code == 0, capfd.readouterr().err
    lines = log.read_text().splitlines()
    assert "Started model pruning process (quark job config/jobs/quark.yaml)" in lines[0]
    assert "Saved pruned model to" in lines[-1]
    assert digest(reads / "mlog" / "config.json") == config
    assert (tmp_path / "out" / "prune.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out"]


@pytest.mark.slow
def test_plots_replace_only_what_this_tool_drew(reads, tmp_path, capfd):
    """Item 3: a plot of ours is replaced without a word, a user's file of the same name only with --overwrite;
    a refused run writes neither tables nor plots."""
    from pruning.core.io import is_our_file

    args = ["tables", "--results", str(reads / "results"), "--out", str(tmp_path / "T"), "--plots",
            str(tmp_path / "P")]
    assert cli.main(args) == 0, capfd.readouterr().err
    plot = tmp_path / "P" / "sparsity-stories260K.png"
    assert is_our_file(plot)
    drawn = plot.read_bytes()
    assert cli.main(args) == 0, capfd.readouterr().err  # our own plot: replaced, same data, same bytes
    assert plot.read_bytes() == drawn

    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"edited by hand")
    shutil.rmtree(tmp_path / "T")
    assert cli.main(args) == 2
    err = capfd.readouterr().err.strip()
    assert err == (f"error: plot {plot} exists and was not written by this tool; refusing to replace it: remove it, "
                   "choose another, or pass --overwrite")
    assert not (tmp_path / "T").exists() and plot.read_bytes().endswith(b"edited by hand")
    assert cli.main(args + ["--overwrite"]) == 0, capfd.readouterr().err
    assert plot.read_bytes() == drawn and (tmp_path / "T").is_dir()


# ------------------------------------------------------------------------------------------ as a user types them

@pytest.mark.slow
def test_items_1_2_3_5_as_the_issue_writes_them(stories_dir, shared_data_dir, reads, tmp_path):
    """The four reproductions in a new interpreter each, with fresh copies of the model and the data."""
    copy_model(stories_dir, tmp_path / "mlog")
    shutil.copytree(shared_data_dir, tmp_path / "D")
    shutil.copytree(shared_data_dir, tmp_path / "D2")
    (tmp_path / "config" / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "config" / "jobs" / "quark.yaml", tmp_path / "config" / "jobs" / "quark.yaml")
    shutil.copytree(reads / "results", tmp_path / "results")
    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "sparsity-stories260K.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"a user's own figure")
    before = snapshot(tmp_path)
    runs = {
        "1": (["prune", "--model", "mlog", "--method", "magnitude", "--sparsity", "0.5", "--data-dir", "D",
               "--output-dir", "D", "--overwrite"],
              f"error: output directory D contains the input {tmp_path / C4.format(D='D')}; replacing it would "
              "delete that input"),
        "2": (["eval", "--model", "mlog", "--ppl", "--seqlen", "64", "--data-dir", "D2", "--output",
               "D2/wikitext-2-raw-v1/wiki.test.raw", "--overwrite"],
              f"error: output D2/wikitext-2-raw-v1/wiki.test.raw is the input "
              f"{tmp_path / 'D2/wikitext-2-raw-v1/wiki.test.raw'}; choose another path"),
        "3": (["tables", "--results", "results", "--out", "T", "--plots", "P"],
              "error: plot P/sparsity-stories260K.png exists and was not written by this tool; refusing to replace "
              "it: remove it, choose another, or pass --overwrite"),
        "5": (["run", "config/jobs/quark.yaml", "--model", "mlog", "--output-dir", "out", "--log-file",
               "mlog/config.json"],
              f"error: log file mlog/config.json is inside the input {tmp_path / 'mlog'}; choose a path outside it"),
    }
    for item, (args, message) in runs.items():
        result = run_cli(*args, cwd=tmp_path, env={"PRUNING_DEBUG": "0"})
        assert result.returncode == 2, (item, result.stderr)
        assert result.stderr.strip() == message, item
        assert "Loading weights" not in result.stderr
    assert snapshot(tmp_path) == before
