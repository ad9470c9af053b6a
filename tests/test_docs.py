"""The README and docs/ stay true to the tree: every relative link resolves (its file, and its heading), and every
command they quote names files, configs and flags that exist."""

import dataclasses
import re
import shlex

import pytest
from accelerate.commands.launch import launch_command_parser

from helpers import REPO_ROOT
from recipe.args import DataArguments, ModelArguments, RecipeTrainingArguments

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
RECORDS = [REPO_ROOT / "benchmarks" / "RESULTS.md"]  # links checked; its commands are a record of their day
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_START = re.compile(r"^(python |accelerate launch )")
REPOSITORY_PATH = re.compile(r"^(configs|accelerate_configs|recipe|benchmarks|tests|data|docs)/")
# The commands whose flags are the run's settings: recipe.train and recipe.data read one config plus --key value.
SETTINGS_COMMANDS = {"recipe/train.py", "recipe.train", "recipe.data"}


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def relative_links(page):
    for target in LINK.findall(page.read_text()):
        if not target.startswith(("http://", "https://", "mailto:")):
            yield target


def quoted_commands(page) -> list[str]:
    """Command lines in ```bash blocks, and inline `code` that starts like a command."""
    text, commands = page.read_text(), []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands += [line for line in block.splitlines() if COMMAND_START.match(line)]
    commands += [code for code in re.findall(r"`([^`\n]+)`", text) if COMMAND_START.match(code)]
    return commands


def settings_flags() -> set[str]:
    names = {field.name for cls in (ModelArguments, DataArguments, RecipeTrainingArguments)
             for field in dataclasses.fields(cls)}
    return {f"--{name}" for name in names}


def accelerate_flags() -> set[str]:
    return {option for action in launch_command_parser()._actions for option in action.option_strings}


def program_of(words: list[str]) -> tuple[str, list[str]]:
    """(the program a command runs, its arguments): a script path or a `-m` module, after accelerate's own flags."""
    if words[0] == "accelerate":
        words = words[2:]
        while words and words[0].startswith("-"):
            assert words[0] in accelerate_flags(), f"accelerate launch has no {words[0]}"
            words = words[2:] if words[0] in ("--config_file", "--num_processes", "--machine_rank",
                                               "--main_process_ip", "--main_process_port", "--mixed_precision") else words[1:]
        if words and words[0] == "-m":
            return words[1], words[2:]
        return words[0], words[1:]
    words = words[1:]  # python
    if words[0] == "-m":
        return words[1], words[2:]
    return words[0], words[1:]


def source_of(program: str) -> str:
    """The source a command's own flags are defined in (benchmarks share common.py's)."""
    if program.startswith("recipe."):
        return (REPO_ROOT / "recipe" / f"{program.split('.')[1]}.py").read_text()
    if program == "recipe/train.py":
        return (REPO_ROOT / program).read_text()
    if program.startswith("benchmarks/"):
        return (REPO_ROOT / program).read_text() + (REPO_ROOT / "benchmarks" / "common.py").read_text()
    return (REPO_ROOT / program).read_text()


@pytest.mark.parametrize("page", PAGES + RECORDS, ids=lambda page: page.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name} links to {target}: {linked.name} has no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_quoted_command_names_files_and_flags_that_exist(page):
    for command in quoted_commands(page):
        words = shlex.split(command.split(" # ")[0].replace("$", ""))
        program, arguments = program_of(words)
        if REPOSITORY_PATH.match(program):  # (other projects' scripts, e.g. llama.cpp's converter, are theirs)
            assert (REPO_ROOT / program).is_file(), f"{page.name}: {command}: no {program}"
        for word in arguments:
            if REPOSITORY_PATH.match(word):
                assert (REPO_ROOT / word).exists(), f"{page.name}: {command}: no {word}"
            if not word.startswith("--") or program == "pytest":  # pytest's own flags
                continue
            flag = word.split("=")[0]
            own = f'"{flag}"' in source_of(program)
            if program in SETTINGS_COMMANDS:
                assert own or flag in settings_flags(), f"{page.name}: {command}: {flag} is not a setting"
            elif REPOSITORY_PATH.match(program) or program.startswith("recipe."):
                assert own, f"{page.name}: {command}: {program} has no {flag}"


def test_every_docs_page_starts_with_its_command():
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page.name
        first_block = next(index for index, line in enumerate(lines) if line.startswith("```"))
        assert lines[first_block] == "```bash" and first_block <= 3, f"{page.name} does not start with a command"


def test_results_open_with_the_current_figures():
    results = (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    sections = [line for line in results if line.startswith(("# ", "## "))]
    history = sections.index("# History")
    assert history > 5 and all(line.startswith("## ") for line in sections[1:history])


def test_the_readme_is_a_landing_page():
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 150
    marker = readme.index("<!-- test command -->")
    assert marker < 60 and readme.index("## Quick start") < 15  # the first screen
