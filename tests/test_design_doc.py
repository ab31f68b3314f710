"""docs/design.rst stays honest about the tests and modules it names."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def design():
    with open(os.path.join(ROOT, "docs", "design.rst"), encoding="utf-8") as f:
        return f.read()


def test_every_test_file_it_cites_exists():
    cited = set(re.findall(r"``(test_\w+\.py)``", design()))
    assert len(cited) >= 10
    assert sorted(c for c in cited if not os.path.isfile(os.path.join(ROOT, "tests", c))) == []


def test_every_module_it_lists_exists():
    listed = set(re.findall(r"``(safepool/[\w/.]+)``", design()))
    assert "safepool/_manager.py" in listed
    assert sorted(p for p in listed if not os.path.exists(os.path.join(ROOT, p))) == []


def test_it_is_in_the_docs_index():
    with open(os.path.join(ROOT, "docs", "index.rst"), encoding="utf-8") as f:
        assert re.search(r"^   design$", f.read(), re.M)
