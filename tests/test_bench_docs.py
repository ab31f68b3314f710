"""The benchmarks page renders as a table that reads right (issue 12 item 6).

benchmarks/run.py --write-docs turns a saved run into docs/_generated/bench_results.rst; here
the newest saved full run is rendered again and the result checked: no cell parses as a list,
descriptions that start with code keep their case, and the table is narrow enough for the
docs' content column.
"""
import argparse
import glob
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

run = pytest.importorskip("run")  # benchmarks/run.py (needs psutil only)

LIST_ITEM = re.compile(r"^(?:[-+*\u2022](?:\s|$)|\d+[.)](?:\s|$)|#\.)")


def render(path):
    args = argparse.Namespace(from_json=path, quick=False, repeat=1)
    cases, executors, sizes, records, info, _ = run.load_json(args)
    summary = run.summarize(records, executors, cases)
    return run.render_rst(summary, executors, cases, info, args, sizes)


def saved_run_of_the_page():
    """The saved --json run the committed page was rendered from (it names the commit)."""
    with open(os.path.join(ROOT, "docs", "_generated", "bench_results.rst")) as f:
        committed = f.read()
    found = re.search(r"safepool from commit ``(\w+)``", committed)
    if found is None:
        pytest.skip("the committed page is the placeholder")
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.json"))):
        with open(path) as f:
            if json.load(f).get("machine", {}).get("commit") == found.group(1):
                return path, committed
    pytest.fail("no benchmarks/results/*.json for commit %s" % found.group(1))


@pytest.fixture(scope="module")
def page():
    return render(saved_run_of_the_page()[0])


def test_the_committed_page_is_what_the_generator_renders(page):
    # Change benchmarks/run.py's rendering, then run
    # python benchmarks/run.py --from-json benchmarks/results/<that run>.json --write-docs
    assert page == saved_run_of_the_page()[1]


def table_cells(text):
    """The list-table as rows of cell texts."""
    rows = []
    for line in text.splitlines():
        if line.startswith("   * - "):
            rows.append([line[len("   * - "):]])
        elif line.startswith("     - ") and rows:
            rows[-1].append(line[len("     - "):])
    return rows


def test_no_cell_renders_as_a_list(page):
    cells = [cell for row in table_cells(page) for cell in row]
    assert cells
    assert [c for c in cells if not c.strip() or LIST_ITEM.match(c)] == []
    assert run.rst_cell("-") == "\\-" and run.rst_cell("1. x") == "\\1. x"
    assert run.rst_cell("+3.2 MB") == "+3.2 MB"


def test_descriptions_that_start_with_code_keep_their_case(page):
    descriptions = page.split("What the cases measure", 1)[1]
    assert "``list(map(square, range(N), chunksize=1000))``" in descriptions
    assert "``shutdown(wait=True)``" in descriptions and "Shutdown(" not in descriptions
    assert "List(" not in descriptions and "Submit(" not in descriptions
    assert "Construct the executor" in descriptions  # plain words are capitalised


def test_the_table_fits_the_content_column(page):
    # furo's content column is 40em (640 px) wide; at about 0.55em a character, plus cell
    # padding (counted as 2 characters), a table whose columns' longest unbreakable words
    # add up to 64 characters or fewer fits without a horizontal scroll bar. Browsers break
    # lines at spaces and after hyphens ("stdlib-forkserver").
    rows = table_cells(page)
    widest = [max(len(word) + 2 for row in rows for word in re.split(r"\s+|(?<=-)", row[i])
                  if word)
              for i in range(len(rows[0]))]
    assert sum(widest) <= 64, widest
    assert "size" not in rows[0]


def test_cells_without_a_number_are_explained_below(page):
    rows = table_cells(page)
    words = {cell for row in rows[1:] for cell in row[1:] if not re.search(r"\d", cell)}
    for word in words:
        assert "Cells without a number" in page and ": %s" % word in page
