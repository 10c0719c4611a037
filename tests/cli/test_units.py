"""Sizes mean one thing everywhere (runner.units): GB = 10^9 bytes, GiB = G = 2^30 bytes."""

from __future__ import annotations

import pytest

from runner.commands import build_parser
from runner.slurm.sbatch import memory_option
from runner.units import format_binary_size, format_count, format_size, parse_size, short_duration


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16GB", 16 * 10**9),
        ("16gb", 16 * 10**9),
        ("16 GB", 16 * 10**9),
        ("500MB", 500 * 10**6),
        ("5KB", 5000),
        ("2TB", 2 * 10**12),
        ("16GiB", 16 * 2**30),
        ("16G", 16 * 2**30),
        ("16g", 16 * 2**30),
        ("16gib", 16 * 2**30),
        ("512MiB", 512 * 2**20),
        ("512M", 512 * 2**20),
        ("4K", 4096),
        ("1T", 2**40),
        ("1024", 1024),
        ("1024B", 1024),
        ("0", 0),
        (" 8 GiB ", 8 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("4.35MB", 4_350_000),
        (".5K", 512),
    ],
)
def test_si_units_are_powers_of_1000_and_binary_units_and_bare_letters_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "16Gi", "16 G B", "-1G", "1e9", "16GBs", "G"])
def test_a_size_that_is_not_one_is_refused_with_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a size: write e\.g\. 16GB \(16 x 10\^9 bytes\), 16GiB or 16G"):
        parse_size(text)


def _option(argv: list[str], dest: str) -> int:
    value = getattr(build_parser().parse_args(argv), dest)
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize("text", ["16GB", "16GiB", "16G", "750MB", "1.5GiB"])
def test_every_command_reads_a_size_the_same_way(text: str) -> None:
    expected = parse_size(text)
    assert _option(["plan", "job.toml", "--memory", text], "memory") == expected
    assert _option(["models", "import", "hf:a/b", "--as", "b", "--confirm-above", text], "confirm_above") == expected
    assert _option(["serve", "jobs", "--api-max-upload", text], "api_max_upload") == expected
    assert _option(["watch", "jobs", "--api-max-upload", text], "api_max_upload") == expected
    # sbatch's G and M are powers of 1024: the same bytes, in whole MiB rounded up
    mem = memory_option(text)
    assert expected <= parse_size(mem) < expected + 2**20, mem


def test_a_bad_size_on_the_command_line_is_a_usage_error_that_says_what_to_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["models", "import", "hf:a/b", "--as", "b", "--confirm-above", "huge"])
    assert exit_.value.code == 2
    assert "--confirm-above: 'huge' is not a size: write e.g. 16GB" in capsys.readouterr().err


def test_sizes_are_printed_in_units_they_are_read_back_in() -> None:
    assert format_size(5 * 10**9) == "5.0 GB" and parse_size("5.0GB") == 5 * 10**9
    assert format_size(812) == "812 B" and format_size(None) == "-"
    assert format_size(12_345_678_901_234) == "12.3 TB"
    assert format_binary_size(3 * 2**29) == "1.50 GiB" and parse_size("1.50GiB") == 3 * 2**29
    assert format_binary_size(512 * 2**20) == "512 MiB" and format_binary_size(None) == "?"
    assert format_count(135_000_000) == "135.0M" and format_count(812) == "812" and format_count(None) == "-"


def test_durations_are_short_and_never_negative() -> None:
    assert [short_duration(s) for s in (42, 185, 7800, -5, None, float("inf"))] == [
        "42s",
        "3m05s",
        "2h10m",
        "0s",
        "-",
        "-",
    ]
