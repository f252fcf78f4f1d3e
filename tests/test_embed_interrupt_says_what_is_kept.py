"""Ctrl-C during `embed` says how many images the finished shards keep and how many of the unfinished shard
will be embedded again (only finished shards survive), instead of "work written so far is kept"."""
from clipcal.commands.embed import interrupted_note


def test_nothing_finished(tmp_path):
    assert interrupted_note(tmp_path / "absent", 5000).startswith("nothing finished yet")
    assert interrupted_note(tmp_path, 5000, 1024).startswith("nothing finished yet")


def test_finished_shards_counted_and_unfinished_shard_named(tmp_path):
    for i in (0, 1):
        (tmp_path / f"shard-{i:05d}.json").write_text("{}")
    (tmp_path / "shard-00002.features.npy").write_text("")  # arrays without json: not finished
    note = interrupted_note(tmp_path, 2500, 1024)
    assert "kept 2048 of 2500 images" in note and "the 452 images of the unfinished shard again" in note


def test_last_short_shard_counts_its_own_size(tmp_path):
    for i in (0, 1, 2):
        (tmp_path / f"shard-{i:05d}.json").write_text("{}")
    note = interrupted_note(tmp_path, 2500, 1024)
    assert "kept 2500 of 2500" in note and "again" not in note


def test_the_embed_command_says_it_on_ctrl_c(tmp_path, tmp_store_root, monkeypatch, capsys):
    """End to end through ``python -m clipcal embed``: Ctrl-C inside the embedding prints the count of the run's
    own partial folder, after the progress bar, and exits 130."""
    import clipcal.embed as embed_mod
    from clipcal.cli import main
    from tests.test_job_that_produced_nothing_fails import ROWS, _bench

    _bench(tmp_path / "data", keep=tuple(range(len(ROWS))))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_mod, "embed_benchmark", interrupted)
    rc = main(["embed", "--benchmark", "csv", "--root", str(tmp_path / "data"), "--backbone", "tiny:clip",
               "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.rstrip().endswith(f"interrupted: nothing finished yet (images are kept in shards of "
                                 f"{embed_mod.SHARD_SIZE}); the next run starts again from the first image")
