"""`python -m client soak`'s verdict, without a server (tests/serve/test_hostile.py runs it against one)."""

from __future__ import annotations

from collections import Counter

from client.cli import main
from client.soak import Report, hostile_cases, same_answer


def test_near_ties_may_swap_but_answers_may_not_change():
    first = [("a", 0.5), ("b", 0.2), ("c", 0.2)]
    assert same_answer(first, [("a", 0.5), ("c", 0.2), ("b", 0.2)])  # a tie swapped
    assert not same_answer(first, [("a", 0.4), ("b", 0.3), ("c", 0.2)])
    assert not same_answer(first, [("b", 0.5), ("a", 0.2), ("c", 0.2)])  # labels with other probabilities


def test_report_fails_on_each_kind_of_problem():
    good = Report(
        requests=Counter(valid0=10),
        worker_pids_start=[1],
        worker_pids_seen=[1],
        rss_after_warmup_mb=100.0,
        rss_end_mb=105.0,
    )
    assert good.problems() == [] and good.to_dict()["passed"]
    restarted = Report(worker_pids_start=[1], worker_pids_seen=[1, 2], rss_after_warmup_mb=100.0, rss_end_mb=100.0)
    assert restarted.worker_restarts == 1 and "1 worker restart" in restarted.problems()[0]
    grown = Report(rss_after_warmup_mb=100.0, rss_end_mb=120.0, valid_failures=["valid0: HTTP 500"])
    problems = grown.problems()
    assert "1 valid request(s) failed" in problems[0] and "grew 20.0%" in problems[1]
    assert "not measured" in Report().problems()[0]


def test_hostile_cases_are_the_documented_ones():
    cases = {case.name: case for case in hostile_cases()}
    assert set(cases) == {"flood", "png_bomb", "png_16bit", "junk", "empty", "truncated", "form", "json"}
    assert cases["flood"].body.count(b"Content-Disposition") == 1000 and cases["flood"].expected == (413,)
    assert len(cases["png_bomb"].body) < 100 and cases["empty"].body == b""


def test_no_server_in_the_run_dir_is_exit_2(tmp_path, capsys):
    assert main(["soak", "--run-dir", str(tmp_path), "--duration", "1s"]) == 2
    assert "no TorchServe running" in capsys.readouterr().err
