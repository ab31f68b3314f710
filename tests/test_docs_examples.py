"""Every Python example in the documentation runs.

Each ``.. code-block:: python`` in ``docs/**/*.rst`` is extracted, written to its own file and
run with the current interpreter in a subprocess. The example passes when it exits with status
0 within the time limit and leaves no process behind.

Conventions (also described in docs/contributing-docs.rst), as reStructuredText comments on the
line before the ``code-block`` directive:

``.. skip-example: <reason>``
    The next block is not run (a fragment, or it needs something the test machine lacks).
``.. example-requires: <module> [<module> ...]``
    The next block runs only if these modules can be imported; otherwise it is skipped.

Every example must be a complete program with an ``if __name__ == "__main__":`` guard (workers
are started with forkserver or spawn and import the example as a module) and valid Python 3.8
syntax. Set SAFEPOOL_DOCS_EXAMPLE_TIMEOUT to change the per-example limit (seconds).
"""
import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs"
# Generous, because CI machines are slow; examples are meant to take well under 3 s.
TIMEOUT = float(os.environ.get("SAFEPOOL_DOCS_EXAMPLE_TIMEOUT", "30"))
SLOW = 3.0
# How long the pool's stdlib helpers (forkserver, resource tracker) may take to notice that
# the example's interpreter has exited and exit too.
LEFTOVER_GRACE = 5.0

DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\.[ \t]+(?:code-block|code|sourcecode)::[ \t]*"
                       r"(?P<lang>\S*)[ \t]*$")
PYTHON_LANGS = {"python", "python3", "py", "py3"}
SKIP = re.compile(r"^[ \t]*\.\.[ \t]+skip-example\b")
REQUIRES = re.compile(r"^[ \t]*\.\.[ \t]+example-requires:(?P<modules>.*)$")
MAIN_GUARD = re.compile(r"""^if __name__ == ["']__main__["']:""", re.M)


class Example:
    def __init__(self, path, line, source, skip=None, requires=()):
        self.path = path          # the .rst file
        self.line = line          # 1-based line of the code-block directive
        self.source = source
        self.skip = skip          # reason, or None
        self.requires = requires  # module names

    @property
    def id(self):
        return "{}:{}".format(self.path.relative_to(DOCS_DIR).as_posix(), self.line)


def _indent_of(line):
    return len(line) - len(line.lstrip(" \t"))


def _previous_nonblank(lines, index):
    for i in range(index - 1, -1, -1):
        if lines[i].strip():
            return lines[i]
    return ""


def extract_examples(path):
    """Return the Python code blocks of one .rst file as Examples."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples = []
    i = 0
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if not match or match.group("lang").lower() not in PYTHON_LANGS:
            i += 1
            continue
        start = i
        base = len(match.group("indent").expandtabs())
        i += 1
        # Directive options (":caption: ...") come first, indented, before a blank line.
        while i < len(lines) and lines[i].strip().startswith(":") and _indent_of(lines[i]) > base:
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
            body.append(lines[i])
            i += 1
        source = textwrap.dedent("\n".join(body)).strip("\n") + "\n"

        marker = _previous_nonblank(lines, start)
        skip, requires = None, ()
        if SKIP.match(marker):
            skip = marker.split("skip-example", 1)[1].lstrip(":").strip() or "skip-example"
        requires_match = REQUIRES.match(marker)
        if requires_match:
            requires = tuple(requires_match.group("modules").split())
        examples.append(Example(path, start + 1, source, skip, requires))
    return examples


def all_examples():
    examples = []
    for path in sorted(DOCS_DIR.rglob("*.rst")):
        if "_build" in path.relative_to(DOCS_DIR).parts:
            continue
        examples.extend(extract_examples(path))
    return examples


EXAMPLES = all_examples()


def test_examples_were_found():
    # Guards against the extractor silently finding nothing (a changed directive style, say).
    assert len(EXAMPLES) >= 20, [e.id for e in EXAMPLES]


def test_markers_are_well_formed():
    """A misspelt marker would silently run (or skip) the wrong block."""
    bad = []
    for path in DOCS_DIR.rglob("*.rst"):
        if "_build" in path.relative_to(DOCS_DIR).parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if re.match(r"\.\.\s+(skip[-_ ]?example|example[-_ ]?requires)", stripped, re.I):
                if not (SKIP.match(line) or REQUIRES.match(line)) or "::" in stripped:
                    bad.append("{}:{}: {}".format(path.name, number, stripped))
    assert not bad, "malformed example markers:\n" + "\n".join(bad)


def _environ_has(process, token):
    try:
        return process.environ().get("SAFEPOOL_DOCS_EXAMPLE_TOKEN") == token
    except Exception:  # gone, a zombie, or not ours to inspect
        return False


def _leftovers(token):
    """Processes still alive that inherited this example's environment token."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid == os.getpid():
            continue
        if _environ_has(process, token):
            found.append(process)
    return found


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_doc_example(example, tmp_path):
    if example.skip:
        pytest.skip(example.skip)
    for module in example.requires:
        if importlib.util.find_spec(module) is None:
            pytest.skip("needs {}".format(module))

    try:
        ast.parse(example.source, filename=example.id, feature_version=(3, 8))
    except SyntaxError as exc:
        pytest.fail("{} is not valid Python 3.8: {}".format(example.id, exc))
    assert MAIN_GUARD.search(example.source), (
        "{} needs an `if __name__ == \"__main__\":` guard: workers import the example "
        "as a module".format(example.id))

    # A distinctive file name: the script's directory is first on sys.path, so a name like
    # "asyncio.py" would shadow the standard library.
    stem = re.sub(r"\W+", "_", example.path.stem)
    script = tmp_path / "docs_example_{}_L{}.py".format(stem, example.line)
    script.write_text(example.source, encoding="utf-8")

    token = uuid.uuid4().hex
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["SAFEPOOL_DOCS_EXAMPLE_TOKEN"] = token
    env.setdefault("PYTHONFAULTHANDLER", "1")

    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=str(tmp_path), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        _kill_leftovers(token)
        pytest.fail("{} did not finish within {} s\n--- stdout\n{}\n--- stderr\n{}".format(
            example.id, TIMEOUT, _text(exc.stdout), _text(exc.stderr)))
    elapsed = time.monotonic() - started

    assert proc.returncode == 0, (
        "{} exited with status {}\n--- source\n{}\n--- stdout\n{}\n--- stderr\n{}".format(
            example.id, proc.returncode, example.source, _text(proc.stdout),
            _text(proc.stderr)))
    if elapsed > SLOW:
        warnings.warn("{} took {:.1f} s; keep doc examples under {} s".format(
            example.id, elapsed, SLOW), stacklevel=2)

    if importlib.util.find_spec("psutil") is not None and sys.platform.startswith("linux"):
        deadline = time.monotonic() + LEFTOVER_GRACE
        left = _leftovers(token)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _leftovers(token)
        if left:
            described = _describe(left)
            _kill_leftovers(token)
            pytest.fail("{} left processes behind after exiting: {}".format(
                example.id, described))


def _describe(processes):
    out = []
    for process in processes:
        try:
            out.append("{} ({}, {})".format(process.pid, process.status(),
                                            " ".join(process.cmdline())[:120]))
        except Exception:
            out.append(str(process.pid))
    return "; ".join(out)


def _kill_leftovers(token):
    """Kill, by pid, the processes this example started and left behind."""
    if importlib.util.find_spec("psutil") is None:
        return
    for process in _leftovers(token):
        try:
            process.kill()
        except Exception:
            pass


def _text(data):
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return data[-6000:]
