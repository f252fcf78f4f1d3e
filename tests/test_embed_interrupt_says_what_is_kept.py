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
