"""Every command line README.md and docs/*.md show (code blocks and inline code): the cheap ones run with their sizes
shrunk, from a temporary folder; the expensive ones (train, bench, card, eval tables, examples) go through the CLI's
parser, so a renamed or removed flag fails here. Optional parts `[--a | --b x]` are tried one at a time."""

from __future__ import annotations

import re
import shlex

import pytest

from explorer.cli import build_parser, main
from support import ROOT

PROGRAMS = ("python -m explorer ", "dlm-explorer ")
RUN = {"list", "sample", "eval", "export"}  # the rest is parsed only
PLACEHOLDERS = {"NAME": "mdlm-tiny", "val|test": "val", "/models/LLaDA-8B-Instruct": "LLaDA-8B-Instruct"}
SHRUNK = {"sample": {"--gen-length": "4", "--steps": "2", "--block-length": "4"},  # steps / blocks only if given
          "eval": {"--max-windows": "2", "--n-t": "1"}, "export": {"--max-frames": "4", "--width": "300"}}
OUTPUTS = ("--trace", "--json", "--table", "--html", "--gif")


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README sends readers to docs/


def readme_commands() -> list[tuple[str, str]]:
    """(document, command) for the `python -m explorer ...` / `dlm-explorer ...` lines in README.md and docs/*.md, in
    order: code block lines with their continuations joined and comments dropped, inline code with its line breaks."""
    found = []
    for document in DOCUMENTS:
        text, name = document.read_text(), str(document.relative_to(ROOT))
        for block, inline in re.findall(r"^```[^\n]*\n(.*?)^```|`([^`]+)`", text, flags=re.S | re.M):
            lines = block.replace("\\\n", " ").splitlines() if block else [inline]
            found += [(name, " ".join(re.sub(r"\s#.*", "", line).split())) for line in lines]
    return [(name, line) for name, line in found if line.startswith(PROGRAMS)]


def variants(command: str) -> list[list[str]]:
    """argv lists: the command without its optional `[...]` parts, then with each alternative of each part."""
    argv_text = command.removeprefix("python -m explorer ").removeprefix("dlm-explorer ")
    options = re.findall(r"\[([^\]]*)\]", argv_text)
    base = re.sub(r"\s*\[[^\]]*\]", "", argv_text)
    alternatives = [alt.strip() for part in options for alt in part.split("|")]
    return [[PLACEHOLDERS.get(a, a) for a in shlex.split(f"{base} {extra}")] for extra in ["", *alternatives]]


CASES = list({" ".join(argv): (f"{name}: `{command}`", argv) for name, command in readme_commands()
              for argv in variants(command)}.values())  # each distinct argv once (the documents repeat some)


def test_the_docs_show_commands_of_every_kind():
    kinds = {argv[0] for _, argv in CASES}
    assert {"list", "sample", "eval", "export", "train", "train-autoencoder", "bench", "card", "examples"} <= kinds
    assert any("--clamp" in argv for _, argv in CASES) and any("--device-map" in argv for _, argv in CASES)


def test_commands_are_read_from_the_readme_and_the_docs_it_links():
    """The reference material moved from the README to docs/: its commands stay tested there."""
    names = {name for name, _ in readme_commands()}
    assert {"README.md", "docs/cli.md", "docs/benchmarks.md", "docs/calm.md"} <= names, names


@pytest.mark.parametrize("command, argv", CASES, ids=[" ".join(argv) for _, argv in CASES])
def test_readme_command_parses(command, argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:
        if exit.code:  # `--help` exits 0
            pytest.fail(f"the CLI no longer takes {command} (as {argv}); see the usage above")


def shrunk(argv: list[str]) -> list[str]:
    """argv with small sizes: SHRUNK's values replace given flags' values; gen-length / max-windows / n-t and the
    export sizes are added when missing."""
    argv, sizes = list(argv), SHRUNK.get(argv[0], {})
    for flag, value in sizes.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        elif flag not in ("--steps", "--block-length"):
            argv += [flag, value]
    return argv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary working folder with a trace `t.json` (what the README's export reads) and a tiny LLaDA-layout
    folder with a chat template standing in for /models/LLaDA-8B-Instruct."""
    import explorer
    from explorer.released.synthetic import write_tiny_llada

    folder = tmp_path_factory.mktemp("readme")
    write_tiny_llada(folder / "LLaDA-8B-Instruct", eot=True)
    explorer.generate(explorer.load("mdlm-tiny"), "ROMEO:", gen_length=8, steps=4, record="full").save(
        folder / "t.json")
    return folder


RUNS = [(command, argv) for command, argv in CASES if argv[0] in RUN
        and "--table" not in argv  # the full comparison tables
        and not {"--device", "--device-map"} & set(argv)]  # hardware this machine may not have


@pytest.mark.parametrize("command, argv", RUNS, ids=[" ".join(argv) for _, argv in RUNS])
def test_readme_command_runs(command, argv, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    argv = shrunk(argv)
    for i, arg in enumerate(argv):
        if argv[i - 1] in OUTPUTS:  # written in the temporary folder, which gets the folders they name
            (workdir / arg).parent.mkdir(parents=True, exist_ok=True)
        elif "/" in arg and (ROOT / arg).is_file():  # an input in the repository (explorer/examples/...)
            argv[i] = str(ROOT / arg)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{command} run as {argv} failed:\n{err}"
    if argv[0] == "sample":
        assert "nfe" in err
