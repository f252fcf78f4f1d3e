"""Ctrl-C in any command other than embed (which counts its own shards) says what is really kept: finished shards
and stored runs, not an unfinished calibration (the old "work written so far is kept" was wrong for calibrate)."""

from __future__ import annotations

import argparse

from clipcal import cli


def test_interrupt_names_what_survives(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=interrupted)

    monkeypatch.setattr(cli, "build_parser", Parser)
    rc = cli.main(["calibrate"])
    err = capsys.readouterr().err
    assert rc == 130
    assert "finished embedding shards and stored runs are kept" in err
    assert "a calibration that had not finished is not stored" in err
