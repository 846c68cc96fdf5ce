"""The benchmark suite's plumbing (the benchmarks themselves are not tests: they assert nothing): every
registered benchmark exists and records, ``run`` measures each in its own process, keeps going past a
failure, and appends the scripts' entries and its own summary to the records file."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import suite
from tests.helpers import ROOT


def test_every_registered_benchmark_is_a_script_that_records_and_takes_its_quick_flags():
    assert {"flow_grpo_step", "cost_growth", "vlm_grpo_vs_trl", "video_rollout", "rm_vs_trl"} <= set(suite.SUITE)
    for name, b in suite.SUITE.items():
        text = (ROOT / "benchmarks" / b.script).read_text()
        assert '"--record"' in text, name
        for flag in [a for a in (*b.args, *b.quick_args) if a.startswith("--")]:
            assert f'"{flag}"' in text, (name, flag)


FAKE = """
import sys
sys.path.insert(0, {root!r})
from benchmarks.flow_grpo_step import record_entry
print("| variant | time |\\n|---|---:|\\n| a | 1 s |")
if "--record" in sys.argv:
    record_entry("fake_bench", ["| variant | time |", "|---|---:|", "| a | 1 s |"], hardware="test")
big = bytearray(64 * 1024 * 1024)  # 64 MiB resident: the suite must see it
big[::4096] = b"x" * len(big[::4096])
sys.exit({rc})
"""


def test_run_measures_each_benchmark_records_it_and_survives_a_failure(tmp_path, monkeypatch, capsys):
    for name, rc in (("ok", 0), ("broken", 3)):
        (tmp_path / f"{name}.py").write_text(FAKE.format(root=str(ROOT), rc=rc))
    monkeypatch.setattr(suite, "SUITE", {
        "broken": suite.Benchmark(str(tmp_path / "broken.py"), "a benchmark that fails"),
        "ok": suite.Benchmark(str(tmp_path / "ok.py"), "a benchmark that works", quick_args=("--quick-flag",)),
    })
    doc = tmp_path / "records.md"
    monkeypatch.delenv("GENRL_BENCHMARK_DOC", raising=False)
    assert suite.main(["run", "--doc", str(doc), "--quick"]) == 1  # one failed: the status says so
    text = doc.read_text()
    assert text.count("## fake_bench") == 2  # each script recorded its own figures
    summary = text[text.index("## benchmark suite"):]
    rows = {m[0]: m for m in re.findall(r"^\| (\w+) \| [^|]+ \| (\d+) \| (\d+) s \| (\d+) MiB \| `([^`]+)` \|$", summary, re.M)}
    assert rows["broken"][1] == "3" and rows["ok"][1] == "0"
    assert int(rows["ok"][3]) >= 64  # the child's peak memory, not the suite's
    assert "--quick-flag" in rows["ok"][4] and "--record" in rows["ok"][4]
    assert "- versions: torch" in summary and sys.platform != "win32"


def test_unknown_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        suite.main(["run", "no_such_bench"])
    assert "unknown benchmark(s) ['no_such_bench']" in capsys.readouterr().err
    assert suite.main(["list"]) == 0
    assert "cost_growth" in capsys.readouterr().out
