"""ApacheBench's report, parsed from a real run's output (captured from `ab -k` against TorchServe serving
resnet20 in `python -m benchmarks serve --quick`), and what the benchmark says when ab is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.apachebench import AB_MISSING, ab_command, parse_ab
from benchmarks.latency import ab_cross_check, rate_ladder

REAL_AB_OUTPUT = Path(__file__).with_name("data") / "ab_keepalive_post.txt"


def test_parse_a_real_ab_report():
    text = REAL_AB_OUTPUT.read_text()
    result = parse_ab(text)
    assert result["requests_per_s"] > 0 and result["complete"] > 0 and result["time_s"] > 0
    assert result["failed"] == 0 and result["non_2xx"] == 0
    assert 0 <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    # the same numbers ab printed
    assert f"Complete requests:      {result['complete']}" in text
    assert f"  99%{int(result['p99_ms']):>7}" in text


def test_failures_and_length_mismatches_are_told_apart():
    text = REAL_AB_OUTPUT.read_text()
    complete = parse_ab(text)["complete"]
    damaged = text.replace(
        "Failed requests:        0\n",
        "Failed requests:        9\n   (Connect: 1, Receive: 2, Length: 5, Exceptions: 1)\n",
    ).replace("Keep-Alive requests:", "Non-2xx responses:      3\nKeep-Alive requests:")
    result = parse_ab(damaged)
    assert (result["failed"], result["non_2xx"], result["length_mismatches"]) == (1 + 2 + 1 + 3, 3, 5)
    assert result["complete"] == complete
    with pytest.raises(ValueError, match="not an ApacheBench report"):
        parse_ab("ab: invalid URL\nUsage: ab [options] [http[s]://]hostname[:port]/path\n")


def test_ab_command_posts_the_file_with_keep_alive_and_the_key():
    command = ab_command("/usr/bin/ab", "http://127.0.0.1:8080/predictions/m", Path("cat.jpg"), 4, 15, "KEY")
    assert command[:2] == ["/usr/bin/ab", "-k"] and command[-1] == "http://127.0.0.1:8080/predictions/m"
    for flag, value in (("-c", "4"), ("-t", "15"), ("-p", "cat.jpg"), ("-T", "application/octet-stream")):
        assert command[command.index(flag) + 1] == value
    assert command[command.index("-H") + 1] == "Authorization: Bearer KEY"
    assert "-H" not in ab_command("ab", "http://h/p", Path("x"), 1, 1, None)


def test_without_ab_the_cross_check_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no ab on it
    result = ab_cross_check("http://127.0.0.1:1", None, "m", tmp_path / "x.jpg", 4, 1, tmp_path / "out")
    assert result == {"missing": AB_MISSING}
    assert AB_MISSING == "not measured: ab not installed; `./install.sh --bench-tools` installs Debian's apache2-utils"


def test_rate_ladder_is_fractions_of_the_capacity():
    assert rate_ladder(50.0, (0.2, 0.5, 1.0, 1.1)) == [10.0, 25.0, 50.0, 55.0]
    assert rate_ladder(0.01, (0.2,)) == [0.01]  # never zero
