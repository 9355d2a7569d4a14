"""Consistency of the `trustnlp` command line: help with examples, the shared option vocabulary, errors.

The commands are found by walking the click group typer builds from :data:`trustnlp.cli.app` (no
hard-coded list), so a new command is checked as soon as it is registered.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
from pydantic import ValidationError

# typer 0.20 still imports click names that click 8.5 deprecates (third-party; the CLI itself runs fine)
CLICK_DEPRECATIONS = r"ignore:'click\..*' is deprecated:DeprecationWarning"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"'click\..*' is deprecated", DeprecationWarning)
    import typer
    from typer.testing import CliRunner

    from trustnlp.cli import SHARED_OPTIONS, app, format_options_error, main

pytestmark = pytest.mark.filterwarnings(CLICK_DEPRECATIONS)

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)

#: Spellings a command must not use: the shared name they duplicate.
SYNONYMS = {
    "--output": "--out", "--output-dir": "--out", "--out-dir": "--out", "--outdir": "--out", "-o": "--out",
    "--eps": "--epsilon", "--target-epsilon": "--epsilon", "--eps-list": "--epsilons", "--epsilon-list": "--epsilons",
    "--random-seed": "--seed", "--rng-seed": "--seed", "--dataset": "--data", "--data-path": "--data",
    "--arch": "--model", "--architecture": "--model", "--model-name": "--model", "--task-type": "--task",
}
#: Commands with --out but without --seed, and why.
NO_SEED = {"report": "renders existing results files; rendering makes no random choice"}


def _options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}


def _examples(command: click.Command) -> list[str]:
    """The example command lines of a command's epilog (the paragraphs after ``Examples:``)."""
    paragraphs = [p.strip() for p in (command.epilog or "").split("\n\n")]
    assert paragraphs[0] == "Examples:", command.epilog
    return paragraphs[1:]


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_walk_finds_every_pillar() -> None:
    # guards the tests below against walking an empty or partial group
    assert {"train", "evaluate", "predict", "audit", "privatize", "extract", "fairness", "federate", "cda", "distill",
            "report", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_a_description_and_examples(name: str) -> None:
    command = GROUP.commands[name]
    paragraphs = (command.help or "").split("\n\n")
    assert len(paragraphs) >= 2 and len(paragraphs[1]) >= 120, f"{name}: expected a summary and a description"
    text = _help([name])
    assert "Examples:" in text
    examples = _examples(command)
    assert 1 <= len(examples) <= 3
    shown = [line.strip() for line in text.splitlines() if line.strip().startswith(f"trustnlp {name}")]
    # every example is shown whole on one line of an 80-column terminal, so it can be copied as is
    assert shown == examples


@pytest.mark.parametrize("name", COMMANDS)
def test_every_example_parses(name: str) -> None:
    command = GROUP.commands[name]
    for line in _examples(command):
        argv = shlex.split(line)
        assert argv[:2] == ["trustnlp", name], line
        with command.make_context(name, argv[2:]) as ctx:  # parses and converts every value, runs nothing
            if "out" in ctx.params and "--out" in argv:
                assert str(ctx.params["out"]) == argv[argv.index("--out") + 1]


def test_the_top_level_examples_parse() -> None:
    text = _help([])
    assert "Examples:" in text
    for line in _examples(GROUP):
        argv = shlex.split(line)
        assert line in text and argv[0] == "trustnlp" and argv[1] in GROUP.commands, line
        GROUP.commands[argv[1]].make_context(argv[1], argv[2:])


def test_shared_options_have_one_spelling_and_meaning() -> None:
    used: set[str] = set()
    for name in COMMANDS:
        options = _options(GROUP.commands[name])
        bad = sorted(set(options) & set(SYNONYMS))
        assert not bad, f"{name} uses {bad}; the shared names are {[SYNONYMS[b] for b in bad]}"
        for opt, param in options.items():
            if opt in SHARED_OPTIONS:
                used.add(opt)
                assert param.name == opt[2:], f"{name} {opt} fills `{param.name}`"
        if "--seed" in options:
            assert options["--seed"].type is click.INT, name
        if "--epsilon" in options:  # one target
            assert options["--epsilon"].type is click.FLOAT and not options["--epsilon"].multiple, name
        if "--epsilons" in options:  # a comma-separated list
            assert options["--epsilons"].type is click.STRING, name
        if "--out" in options:
            assert isinstance(options["--out"].type, click.Path), name
    assert used == set(SHARED_OPTIONS)  # each shared name is in use somewhere


def test_every_command_that_writes_results_takes_seed_and_out() -> None:
    for name in COMMANDS:
        options = _options(GROUP.commands[name])
        if "--out" in options and "--seed" not in options:
            assert name in NO_SEED, f"{name} has --out but no --seed"
    for name in NO_SEED:  # the allowlist stays honest
        assert name in COMMANDS and "--seed" not in _options(GROUP.commands[name])


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["train", "--nosuch", "1"], ["No such option", "--nosuch", "trustnlp train --help"]),
    (["train", "--epochs", "abc"], ["'--epochs'", "'abc' is not a valid integer"]),
    (["federate", "--epsilon", "ten"], ["'--epsilon'", "'ten' is not a valid float"]),
    (["audit", "--epsilons", "1,x"], ["Expected `epsilons` to be comma-separated numbers", "'1,x'"]),
    (["extract", "--repetitions", "1,two"], ["`repetitions`", "integers", "'1,two'"]),
    (["train", "--dp", "--epsilon", "-1"], ["Expected `--epsilon`", "greater than 0", "-1.0"]),
    (["cda", "--mode", "sideways"], ["Expected `--mode`", "'two-sided' or 'one-sided'", "'sideways'"]),
    (["evaluate"], ["Missing option '--model'"]),
    (["nosuchcommand"], ["No such command 'nosuchcommand'"]),
])
def test_bad_options_are_one_line_and_exit_code_2(args, needles, capsys, tmp_path) -> None:
    line = _run_main([*args, "--out", str(tmp_path / "out")] if args[0] in GROUP.commands else args, capsys)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_an_unknown_model_is_named(capsys, tmp_path) -> None:
    line = _run_main(["train", "--model", "nosucharch", "--corpus-size", "300", "--out", str(tmp_path)], capsys)
    assert "`model`" in line and "'nosucharch'" in line and "'bag'" in line


@pytest.mark.parametrize("name", [n for n in COMMANDS if "--out" in _options(GROUP.commands[n])])
def test_out_naming_an_existing_file_is_refused(name, capsys, tmp_path) -> None:
    afile = tmp_path / "results.txt"
    afile.write_text("not a directory\n")
    argv = shlex.split(_examples(GROUP.commands[name])[0])[1:]
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(afile)
    else:
        argv += ["--out", str(afile)]
    line = _run_main(argv, capsys)
    assert "'--out'" in line and "expected a directory" in line and str(afile) in line
    assert afile.read_text() == "not a directory\n"


def test_options_error_names_the_option_of_a_list_item() -> None:
    from trustnlp.privacy.audit_study import AuditConfig

    with pytest.raises(ValidationError) as exc:
        AuditConfig(epsilons=[1.0, "x"])
    line = format_options_error(exc.value, ["audit", "--epsilons", "1,x"])
    assert line.startswith("Invalid options: Expected `--epsilons (item 2)` to satisfy: ") and line.endswith("'x'.")
    # a field with no option of that name keeps its own name
    assert "`epsilons.1`" in format_options_error(exc.value, ["report"])


def test_the_installed_entry_point_prints_one_line_without_traceback(tmp_path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "trustnlp.cli", "train", "--out", str(afile)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "'--out'" in proc.stderr and proc.stdout == ""
    assert Path(afile).read_text() == "x"


ROOT = Path(__file__).resolve().parents[1]


def _doc_commands(text: str) -> list[str]:
    """Command lines (``trustnlp ...`` or ``.venv/bin/trustnlp ...``) in fenced or indented code blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        code = line.strip()
        if (fenced or line.startswith("    ")) and code.startswith(("trustnlp ", ".venv/bin/trustnlp ")):
            found.append(code)
    return found


def test_doc_command_lines_parse() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    quickstart = _doc_commands((ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8"))
    assert len(quickstart) >= 15  # one or more per pillar
    covered = set()
    for doc in docs:
        for line in _doc_commands(doc.read_text(encoding="utf-8")):
            argv = shlex.split(line, comments=True)
            if argv[1:] == ["--help"]:
                continue
            assert argv[1] in GROUP.commands, f"{doc.name}: {line}"
            covered.add(argv[1])
            if "--help" in argv:
                continue
            try:
                GROUP.commands[argv[1]].make_context(argv[1], argv[2:])
            except click.UsageError as e:
                raise AssertionError(f"{doc.name}: {line}: {e.format_message()}") from None
    assert {"train", "audit", "extract", "federate", "fairness", "cda", "distill", "report"} <= covered
