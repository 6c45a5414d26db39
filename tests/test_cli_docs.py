"""docs/build_engine.md lists every ``python -m training.build_engine`` option with its current default
and choices (generated from the parser by tests/cli_docs.py; rerun it after changing the options)."""

from cli_docs import DOC, build_engine_parser, options_table, rendered


def test_build_engine_options_documented_from_the_parser():
    parser = build_engine_parser()
    table = options_table(parser)
    assert DOC.read_text() == rendered(DOC.read_text(), table), "docs/build_engine.md is stale: run python tests/cli_docs.py"
    documented = {line.split("`")[1].split()[0] for line in table.splitlines()[2:]}
    assert documented == {max(a.option_strings, key=len) for a in parser._actions if a.option_strings} - {"--help"}
