"""Output directories and user files: more shapes of an output path than the table of test_hostile_bad_input.py
(symlinks, `.`, the working directory, trailing slashes, `~`, `..`, the root, a file of the model), each refused
before any weight loads with nothing on disk changed; what a user may ask for (replacing a link with
--overwrite, an empty --output-dir) keeps the user's files. And the size of the whole hostile suite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .hostile_harness import assert_refused, copy_model, run_in_process, snapshot

M = "{root}/model"
PRUNE = ["prune", "--model", M, "--method", "magnitude", "--sparsity", "0.5", "--device", "cpu", "--quiet",
         "--output-dir"]
EVAL = ["eval", "--model", M, "--ppl", "--seqlen", "64", "--dataset", "{root}/text.txt", "--device", "cpu", "--output"]
CONVERT = ["convert", "--model", M, "--outtype", "f16", "--output"]

# case: (working directory under the root, argv, what the one line says)
OUTPUTS = {
    "prune-output-a-link-to-a-user-directory": (".", PRUNE + ["link-to-userdir"],
                                                "output directory link-to-userdir exists and is not a previous "
                                                "result of this tool (no prune.json)"),
    "prune-output-a-link-to-the-model": (".", PRUNE + ["link-to-model", "--overwrite"],
                                         "output directory link-to-model is the input {root}/model"),
    "prune-output-a-dangling-link": (".", PRUNE + ["dangling"], "output directory dangling exists and is not a directory"),
    "prune-output-dot-in-a-user-directory": ("userdir", PRUNE + ["."], "output directory . exists and is not a previous "
                                                                       "result of this tool"),
    "prune-output-the-working-directory": ("userdir", PRUNE + ["{root}/userdir"],
                                           "output directory {root}/userdir exists and is not a previous result"),
    "prune-output-with-a-trailing-slash": (".", PRUNE + ["userdir/"], "output directory userdir exists and is not a "
                                                                      "previous result"),
    "prune-output-the-model-with-a-trailing-slash": (".", PRUNE + ["model/", "--overwrite"],
                                                     "output directory model is the input {root}/model"),
    "prune-model-with-a-trailing-slash-into-itself": (".", ["prune", "--model", "model/", "--method", "magnitude",
                                                            "--sparsity", "0.5", "--output-dir", "model", "--overwrite"],
                                                      "output directory model is the input {root}/model"),
    "prune-output-home-holding-the-model": (".", ["prune", "--model", "~/m", "--method", "magnitude", "--sparsity",
                                                  "0.5", "--output-dir", "~", "--overwrite"],
                                            "output directory {root}/home/work contains the input {root}/home/work/m"),
    "prune-output-a-grandparent-of-the-model": (".", ["prune", "--model", "{root}/home/work/m", "--method", "magnitude",
                                                      "--sparsity", "0.5", "--output-dir", "{root}/home", "--overwrite"],
                                                "output directory {root}/home contains the input {root}/home/work/m"),
    "prune-output-dotdot-to-the-model": ("userdir", PRUNE + ["../model", "--overwrite"],
                                         "output directory ../model is the input {root}/model"),
    "prune-model-through-a-link-output-its-target": (".", ["prune", "--model", "link-to-model", "--method", "magnitude",
                                                           "--sparsity", "0.5", "--output-dir", "model", "--overwrite"],
                                                     "output directory model is the input {root}/model"),
    "prune-output-inside-a-linked-model": (".", PRUNE + ["link-to-model/pruned"],
                                           "output directory link-to-model/pruned is inside the input"),
    "prune-output-the-filesystem-root": (".", PRUNE + ["/", "--overwrite"],
                                         "output directory / contains the input {root}/model"),
    "prune-output-a-file-of-the-model": (".", PRUNE + ["{root}/model/config.json", "--overwrite"],
                                         "output directory {root}/model/config.json is inside the input {root}/model"),
    "eval-output-dot": ("userdir", EVAL + ["."], "output . is a directory; give a file name"),
    "eval-output-a-link-to-the-model-config": (".", EVAL + ["link-to-config", "--overwrite"],
                                               "output link-to-config is inside the input {root}/model"),
    "eval-output-a-link-to-a-foreign-file": (".", EVAL + ["link-to-foreign"], "output link-to-foreign exists and was "
                                                                              "not written by this tool"),
    "zeroshot-output-a-link-to-a-foreign-file": (".", ["zeroshot", "--model", M, "--task", "arc_easy", "--limit", "2",
                                                       "--device", "cpu", "--output", "link-to-foreign"],
                                                 "output link-to-foreign exists and was not written by this tool"),
    "convert-output-a-link-to-the-weights": (".", CONVERT + ["link-to-weights", "--overwrite"],
                                             "output link-to-weights is inside the input {root}/model"),
    "convert-output-the-weights": (".", CONVERT + ["{root}/model/model.safetensors", "--overwrite"],
                                   "output {root}/model/model.safetensors is inside the input {root}/model"),
    "convert-report-inside-the-model": (".", CONVERT + ["{root}/m.gguf", "--report", "{root}/model/report.json"],
                                        "report {root}/model/report.json is inside the input {root}/model"),
    "speed-output-the-model-config": (".", ["speed", "--model", M, "--device", "cpu", "--output",
                                            "{root}/model/config.json", "--overwrite"],
                                      "output {root}/model/config.json is inside the input {root}/model"),
    "speed-output-dot": (".", ["speed", "--model", M, "--device", "cpu", "--output", "."],
                         "output . contains the input {root}/model"),
    "gguf-eval-output-inside-the-model": (".", ["gguf-eval", "--gguf", "{root}/foreign.gguf", "--model", M, "--seqlen",
                                                "64", "--output", "{root}/model/g.json"],
                                          "output {root}/model/g.json is inside the input {root}/model"),
}


@pytest.fixture(scope="module")
def place(stories_dir, tmp_path_factory) -> Path:
    """A model, a user's directory and files, links to each, and a home directory holding another model."""
    root = tmp_path_factory.mktemp("outputs")
    copy_model(stories_dir, root / "model")
    copy_model(stories_dir, root / "home" / "work" / "m")
    (root / "userdir" / "sub").mkdir(parents=True)
    (root / "userdir" / "notes.txt").write_text("precious\n")
    (root / "foreign.json").write_text('{"mine": true}\n')
    (root / "foreign.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (root / "text.txt").write_text("Once upon a time there was a cat.\n\nThe cat sat.\n" * 50)
    for link, target in (("link-to-userdir", "userdir"), ("link-to-model", "model"), ("dangling", "nowhere"),
                         ("link-to-config", "model/config.json"), ("link-to-weights", "model/model.safetensors"),
                         ("link-to-foreign", "foreign.json")):
        (root / link).symlink_to(root / target)
    return root


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_output_shape_is_refused_and_changes_nothing(case, place, capfd, monkeypatch, no_weights):
    where, argv, expected = OUTPUTS[case]
    monkeypatch.chdir(place / where)
    monkeypatch.setenv("HOME", str(place / "home" / "work"))
    argv = [arg.format(root=place) for arg in argv]
    before = snapshot(place)
    assert_refused(run_in_process(capfd, argv), expected.format(root=place), before=before, root=place)


def _prune(capfd, model, out, *extra):
    outcome = run_in_process(capfd, ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5",
                                     "--output-dir", str(out), "--device", "cpu", "--quiet", *extra])
    assert outcome.code == 0, outcome.stderr
    return outcome


def test_overwrite_replaces_the_link_never_what_it_points_to(stories_dir, tmp_path, capfd, monkeypatch):
    """--overwrite on an output that is a link to a user's directory replaces the link by the result; the
    directory and its files stay, and nothing is left beside (the moved-aside link is removed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.txt").write_text("precious\n")
    (tmp_path / "out").symlink_to(tmp_path / "userdir")
    _prune(capfd, stories_dir, "out", "--overwrite")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "prune.json").is_file()
    assert (tmp_path / "userdir" / "notes.txt").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "userdir"]
    assert sorted(p.name for p in (tmp_path / "userdir").iterdir()) == ["notes.txt"]


def test_a_link_to_an_earlier_result_is_replaced_and_the_result_kept(stories_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _prune(capfd, stories_dir, "earlier")
    earlier = snapshot(tmp_path / "earlier")
    (tmp_path / "out").symlink_to(tmp_path / "earlier")
    _prune(capfd, stories_dir, "out")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out" / "prune.json").is_file()
    assert snapshot(tmp_path / "earlier") == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "out"]


def test_an_empty_output_dir_is_the_default_not_the_working_directory(stories_dir, tmp_path, capfd, monkeypatch):
    """`--output-dir ""` (an unset variable in a script) writes the default models/pruned/NAME-METHOD_pruned."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("precious\n")
    outcome = _prune(capfd, stories_dir, "")
    expected = Path("models") / "pruned" / f"{stories_dir.name}-magnitude_pruned"
    assert json.loads(outcome.stdout)["output_dir"] == str(expected)
    assert (tmp_path / expected / "prune.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "precious\n"


# ------------------------------------------------------------------------------------------------ the suite's size

SUITE_TARGET = 120  # hostile cases across tests/hostile (issue 23), each parametrized case counted once


def hostile_cases() -> dict[str, int]:
    """{file: its test cases}: every test_ function of every test_hostile_*.py module, a parametrized one counted
    once per parameter set (the items pytest collects), read from the modules' own parametrize marks."""
    import importlib
    import inspect
    import math

    counts = {}
    for path in sorted(Path(__file__).parent.glob("test_hostile_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        functions = [f for name, f in inspect.getmembers(module, inspect.isfunction)
                     if name.startswith("test_") and f.__module__ == module.__name__]
        counts[path.name] = sum(math.prod(len(mark.args[1]) for mark in getattr(f, "pytestmark", [])
                                          if mark.name == "parametrize") for f in functions)
    return counts


def test_the_suite_is_large_enough(request):
    counts = hostile_cases()
    assert {"test_hostile_bad_input.py", "test_hostile_output_safety.py", "test_hostile_models.py",
            "test_hostile_configs.py", "test_hostile_held.py"} <= set(counts), counts
    collected = [item for item in request.session.items if item.path == Path(__file__)]
    assert len(collected) <= counts["test_hostile_held.py"]  # the count agrees with pytest's own collection
    if not (request.config.option.keyword or request.config.option.markexpr):  # (a selection collects fewer)
        assert len(collected) == counts["test_hostile_held.py"]
    assert sum(counts.values()) >= SUITE_TARGET, f"{sum(counts.values())} hostile cases: {counts}"
