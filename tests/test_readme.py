"""The README's code runs as written.

Conventions (checked here):
- every ```python block is a complete program: each runs as a script of its own, in a fresh process, in an
  empty directory, offline; code that cannot run in a test (several processes, the Hub, a recipe's full run)
  goes in ```bash blocks, whose commands are checked for what can be checked without running them;
- a ```text block preceded by `<!-- readme-output: ... -->` is what the python block before it prints: its
  lines that are not "..." appear in that program's output in this order, a line ending in " ...}" as the
  prefix of a printed line, the others exactly.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
OUTPUT_MARK = "<!-- readme-output:"
# Pages linked from the README that another part of the project writes; each must exist once it lands.
PENDING_PAGES: set[str] = set()


def _blocks() -> list[tuple[str, str, int]]:
    """(language, code, offset of the block in the README) for every fenced block."""
    text = README.read_text()
    return [(m.group(1), m.group(2), m.start()) for m in BLOCK.finditer(text)]


def _python_blocks() -> list[tuple[str, int]]:
    return [(code, start) for lang, code, start in _blocks() if lang == "python"]


def _expected_output(after: int) -> list[str] | None:
    """The lines of the ```text block marked as the output of the python block that ends before `after`."""
    text = README.read_text()
    blocks = [b for b in _blocks() if b[2] > after]
    nxt_python = next((start for lang, _, start in blocks if lang == "python"), len(text))
    mark = text.find(OUTPUT_MARK, after, nxt_python)
    if mark < 0:
        return None
    shown = next(code for lang, code, start in reversed(blocks) if lang == "text" and start < mark)
    return [line for line in shown.splitlines() if line.strip() != "..."]


def _shows(shown: str, printed: str) -> bool:
    """Whether a line the README shows stands for a printed line (" ...}" at its end: a prefix)."""
    return printed.startswith(shown[: -len(" ...}")]) if shown.endswith(" ...}") else printed == shown


def _extras() -> set[str]:
    """The extras pyproject.toml declares (read without tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, re.M))


def _run(code: str, cwd: Path) -> str:
    script = cwd / "readme_block.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"README block failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def test_the_readme_has_the_python_blocks_it_promises():
    # The Trainer example and the custom loop, at least.
    codes = [code for code, _ in _python_blocks()]
    assert len(codes) >= 2
    assert any("Trainer(" in c and "AutoDropCallback" in c for c in codes)
    assert any("AutoDrop(" in c and "horizon=" in c for c in codes)


# What the Trainer example's run left behind, printed after the example's own code (its log rows, compactly).
_PROBE = (
    "\nimport json\n"
    "print('ROWS', json.dumps([(r['step'], 'loss' in r, 'autodrop/angle' in r) for r in trainer.state.log_history]))\n"
)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Each python block run once: index -> (its output lines, its directory)."""
    cache = {}

    def run(index):
        if index not in cache:
            code, _ = _python_blocks()[index]
            cwd = tmp_path_factory.mktemp(f"readme_block{index}")
            cache[index] = (_run(code + (_PROBE if "Trainer(" in code else ""), cwd).splitlines(), cwd)
        return cache[index]

    return run


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_block_runs_and_prints_what_the_readme_shows(ran, index):
    out, _ = ran(index)
    expected = _expected_output(_python_blocks()[index][1])
    if expected is None:
        return
    assert expected, "an output block marked in the README is empty"
    at = 0
    for line in expected:
        found = next((i for i in range(at, len(out)) if _shows(line, out[i])), None)
        assert found is not None, f"README shows {line!r}, not printed (in this order) by block {index}:\n" + "\n".join(
            out
        )
        at = found + 1


def test_the_trainer_example_drops_and_logs_at_the_trainers_cadence(ran):
    """The example's claims in prose: AutoDrop's metrics ride on the Trainer's rows; the measurements file."""
    index = next(i for i, (code, _) in enumerate(_python_blocks()) if "Trainer(" in code)
    out, cwd = ran(index)
    rows = json.loads(next(line for line in out if line.startswith("ROWS "))[len("ROWS ") :])
    assert [step for step, has_loss, _ in rows if has_loss] == list(range(250, 1501, 250))
    assert all(has_autodrop for _, has_loss, has_autodrop in rows if has_loss)
    assert (cwd / "autodrop_out" / "autodrop_measurements.jsonl").is_file()


def test_the_bash_blocks_name_what_exists():
    extras = _extras()
    assert {"hf", "demo", "recipes", "dev"} <= extras
    makefile = (ROOT / "Makefile").read_text()
    bash = "\n".join(code for lang, code, _ in _blocks() if lang == "bash")
    for extra_list in re.findall(r"hf_autodrop\[([\w,]+)\]", bash):
        for extra in extra_list.split(","):
            assert extra in extras, f"the README installs the extra [{extra}], which pyproject.toml lacks"
    for target in re.findall(r"^make ([\w-]+)", bash, re.M):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"`make {target}`: no such Makefile target"
    assert re.findall(r"^make ([\w-]+)", bash, re.M)[:2] == ["demo", "test"]  # the Quickstart's two commands
    for script in re.findall(r"python (recipes/[\w/]+\.py)", bash):
        assert (ROOT / script).is_file(), script


def test_every_link_of_the_readme_and_its_pages_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"\w+://", target):
                continue
            path = (page.parent / target).resolve()
            if path.relative_to(ROOT).as_posix() in PENDING_PAGES:
                continue
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_no_readme_line_is_longer_than_200_characters():
    long = [(n, len(line)) for n, line in enumerate(README.read_text().splitlines(), 1) if len(line) > 200]
    assert not long, f"README lines over 200 characters (line, length): {long}"
