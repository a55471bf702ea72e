"""The saturation study's quick mode: every task, the bar, where the tests fire, and the saved runs."""

import gzip
import json

from experiments import saturation_study
from hf_autodrop import AutoDropConfig


def test_default_row_is_the_library_default():
    rows = saturation_study.trend_rows({})
    default = saturation_study.default_trend_row(rows)
    assert AutoDropConfig(**rows[default]) == AutoDropConfig(detector="trend")
    # --autodrop overrides reach every trend row, and the default row follows them.
    rows = saturation_study.trend_rows({"trend_window": 20})
    assert all(fields["trend_window"] == 20 for fields in rows.values())
    assert AutoDropConfig(**rows[saturation_study.default_trend_row(rows)]) == AutoDropConfig(
        detector="trend", trend_window=20
    )


def test_quick_study(tmp_path):
    report = open(saturation_study.main(["--quick", "--out", str(tmp_path)])).read()
    for section in ("## The bar", "## Where the tests fire", "## digits", "## charlm", "## NQM", "within 1% of cosine"):
        assert section in report
    assert "the default" in report and "--quick" in report
    # The callback chose the char LM's interval itself, and the report quotes its log line.
    assert "measuring every" in report
    for png in ("saturation_digits.png", "saturation_charlm.png", "saturation_nqm.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    with gzip.open(tmp_path / "saturation_runs.json.gz", "rt") as f:
        runs = json.load(f)["runs"]
    assert {r["task"] for r in runs} == {"digits", "charlm", "nqm-identity"}
    trend = [r for r in runs if "trend test" in r["method"] and r["kind"] != "nqm"]
    assert trend and all(r["autodrop"] and "statistic" in r["autodrop"][0] for r in trend)
    assert all("final_val" in r for r in runs if r["kind"] != "nqm")
    # The report can be rewritten from the saved runs (floats kept to 6 significant digits there, so the
    # last digit of a difference may change): the same rows, and the same firing table.
    rewritten = open(saturation_study.main(["--quick", "--out", str(tmp_path), "--report-only"])).read()

    def rows(text):
        return [line.split("|")[1:4] for line in text.split("## The bar")[1].splitlines() if line.startswith("|")]

    assert rows(rewritten) == rows(report)
    fire = "## Where the tests fire"
    assert rewritten.split(fire)[1].split("## digits")[0] == report.split(fire)[1].split("## digits")[0]
