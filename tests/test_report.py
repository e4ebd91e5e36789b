"""The figures in the README, docs/ and the model cards are the benchmark runs' own numbers, and the
README's Layout names every module.

`benchmarks/report.py` writes every benchmark figure the documentation quotes from
`benchmarks/results/*.json`; these tests fail when a document drifts from the JSON (someone edited a
number by hand, or re-ran a benchmark without re-rendering), and when the quick start's sample report
is not what the sender really prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from tests.conftest import PYTHON, REPO, run_script

REPORT = "benchmarks.report"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", REPORT, "--check", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_documentation_figures_match_the_benchmark_results():
    res = check()
    assert res.returncode == 0, res.stderr


def test_a_result_that_changed_is_reported_as_stale(tmp_path):
    """The check can fail: one throughput figure changed in a copy of the results names its block."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    server = json.loads((results / "server.json").read_text())
    server["levels"][-1]["images_per_s"] += 1.0
    (results / "server.json").write_text(json.dumps(server))
    res = check("--results", str(results))
    assert res.returncode == 1
    assert "docs/benchmarks.md: server" in res.stderr and "quality" not in res.stderr


def test_a_hand_edited_figure_is_reported_as_stale(tmp_path):
    readme = (REPO / "docs" / "benchmarks.md").read_text()
    edited = re.sub(r"(<!-- report:codec-speed -->\n.*?)\d\.\d{3}", r"\g<1>9.999", readme, count=1, flags=re.S)
    assert edited != readme
    doc = tmp_path / "benchmarks.md"
    doc.write_text(edited)
    res = check(str(doc))
    assert res.returncode == 1 and "codec-speed" in res.stderr


REPORT_LINES = ("Image:", "Model:", "Original file size:", "Latent payload size:", "Quality:", "Compression ratio:")


def test_quick_start_sample_report_is_what_the_sender_prints(start_receiver, tmp_path):
    """The README's sample sender report, run for real: every line that doesn't depend on timing matches."""
    readme = (REPO / "README.md").read_text()
    sample = readme.split("The sender prints its report:", 1)[1].split("```", 2)[1]
    rx = start_receiver("--codec", "learned", "--no-show", "--out", str(tmp_path / "out"))
    tx = run_script("sender_sdvae.py", "--codec", "learned", "--port", str(rx.port), timeout=300)
    assert tx.returncode == 0, tx.stderr
    for prefix in REPORT_LINES:
        want = next(line for line in sample.splitlines() if line.startswith(prefix))
        got = next(line for line in tx.stdout.splitlines() if line.startswith(prefix))
        assert got == want, f"README sample says {want!r}, the sender prints {got!r}"
    wire = re.compile(r"\(([\d,]+) bytes on the wire\)")  # the timing beside it varies; the bytes don't
    assert wire.search(sample)[1] == wire.search(tx.stdout)[1], tx.stdout


def test_the_readme_layout_names_every_module_and_only_real_files():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    package = REPO / "latentcomm"
    folders = {p.parent for p in package.rglob("*.py")}
    missing = [f"{d.name}/" for d in folders if d != package and f"{d.name}/" not in layout]
    missing += [
        str(p.relative_to(REPO)) for p in package.rglob("*.py") if p.name != "__init__.py" and p.name not in layout
    ]
    assert not missing, f"the README's Layout doesn't name {missing}"
    places = [REPO, *{p.parent for p in package.rglob("*.py")}, REPO / "tools", REPO / "benchmarks"]
    named = set(re.findall(r"[\w]+\.(?:py|sh|html)", layout))
    ghosts = [n for n in named if not any((d / n).exists() for d in places)]
    assert not ghosts, f"the README's Layout names files that don't exist: {ghosts}"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    docs = [REPO / "README.md", REPO / "tests" / "README.md", *(REPO / "docs").glob("*.md")]
    broken = [
        f"{doc.relative_to(REPO)} -> {target}"
        for doc in docs
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text())
        if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists()
    ]
    assert not broken, broken


def test_usage_lists_every_flag_of_every_command_as_its_parser_says():
    """docs/usage.md's flag tables are written from the parsers: a flag added, renamed or explained
    anew without rewriting them (python -m latentcomm.cli.flagdoc) fails here."""
    from latentcomm.cli import flagdoc

    text = (REPO / "docs" / "usage.md").read_text()
    new, changed = flagdoc.render(text)
    assert not changed, f"stale flag tables: {changed} (run python -m latentcomm.cli.flagdoc)"
    for name in flagdoc.COMMANDS:
        block = text.split(f"<!-- flags:{name} -->", 1)[1].split(f"<!-- /flags:{name} -->", 1)[0]
        missing = [f for f in flagdoc.flags(name) if f"`{f}" not in block and f != "-h" and f != "--help"]
        assert not missing, f"{name}: {missing}"
