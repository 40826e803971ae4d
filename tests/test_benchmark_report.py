"""benchmarks/report.py: a benchmark rewrites its own section of docs/benchmarks.md and no other."""

from benchmarks.report import write_section


def test_a_section_is_replaced_in_place_or_appended(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n")
    write_section(path, "## A", "## A\n\nnew a")
    assert path.read_text() == "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nold b\n"
    write_section(path, "## C", "## C\n\nc")
    assert path.read_text().endswith("## B\n\nold b\n\n## C\n\nc\n")
    write_section(tmp_path / "new.md", "## A", "## A\n\na")
    assert (tmp_path / "new.md").read_text() == "# Benchmarks\n\n## A\n\na\n"
    write_section(tmp_path / "docs" / "new.md", "## A", "## A\n\na")  # a folder that does not exist yet
    assert (tmp_path / "docs" / "new.md").read_text() == "# Benchmarks\n\n## A\n\na\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_every_benchmark_takes_repeats_threads_and_no_write():
    from benchmarks.report import benchmark_parser

    parser = benchmark_parser("A benchmark.\n\nMore text.", repeats=3)
    assert parser.description == "A benchmark."
    args = parser.parse_args([])
    assert (args.repeats, args.threads, args.no_write) == (3, 2, False)
    args = parser.parse_args(["--repeats", "1", "--threads", "4", "--no-write"])
    assert (args.repeats, args.threads, args.no_write) == (1, 4, True)
