"""The README's first screen: exactly the two commands a newcomer runs, both real."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_first_screen_has_exactly_the_two_commands():
    readme = read("README.md")
    first_screen = "\n".join(readme.splitlines()[:24])
    block = re.search(r"```bash\n(.*?)```", first_screen, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands == ["python3 -m pip install -e . && python3 -m safepool demo",
                        "bash .ci/run"]
    assert os.path.isfile(os.path.join(ROOT, ".ci", "run"))


def test_every_tox_env_the_readme_names_exists():
    readme = read("README.md")
    tox = read("tox.ini")
    named = set(re.findall(r"tox -e ([\w-]+)", readme))
    assert {"py311", "soak", "lint", "stdlib-suite", "docs", "build"} <= named
    for env in named - {"py311"}:
        assert "[testenv:%s]" % env in tox, env


def test_readme_tells_how_to_install_and_what_tox_needs():
    readme = read("README.md")
    assert "python3 -m venv" in readme
    assert "python3 -m pip install tox" in readme
    assert "3.8 to 3.13" in readme
    quickstart = read("docs", "quickstart.rst")
    assert "pip install -e ." in quickstart and "not published on PyPI" in quickstart


def test_the_changelog_starts_with_the_version_in_the_one_version_source():
    import safepool

    top = re.search(r"^## (\S+)", read("CHANGELOG.md"), re.M).group(1)
    assert top == safepool.__version__
    assert "version = attr: safepool.__version__" in read("setup.cfg")
