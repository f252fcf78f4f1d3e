"""CelebA (Liu et al., ICCV 2015) as a spurious-correlation benchmark: target Blond_Hair, attribute Male.

Two layouts are read (the Kaggle CSV one is tried first)::

    Kaggle ("jessicali9530/celeba-dataset"):
      <root>/img_align_celeba/<image_id>            (or img_align_celeba/img_align_celeba/<image_id>)
      <root>/list_attr_celeba.csv                   image_id, 5_o_Clock_Shadow, …, Young   (values -1 / 1)
      <root>/list_eval_partition.csv                image_id, partition                    (0 / 1 / 2)

    Original (Google Drive "Anno/" and "Eval/" text files, also used by group_DRO and SubpopBench):
      <root>/img_align_celeba/<image_id>
      <root>/list_attr_celeba.txt      line 1 count, line 2 the 40 names, then "<image_id> -1 1 …"
      <root>/list_eval_partition.txt   "<image_id> <0|1|2>"

Attribute values -1 become 0, +1 become 1. The target and the spurious attribute can be any of the 40
columns (``target=``, ``attribute=``). Splits are the official partition (162,770 / 19,867 / 19,962).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clipcal.data.base import Benchmark
from clipcal.data.csvdata import map_split, read_metadata, require_columns, require_root
from clipcal.errors import DataError

LAYOUT = """\
  <root>/img_align_celeba/000001.jpg …        (Kaggle's nested img_align_celeba/img_align_celeba/ works too)
  <root>/list_attr_celeba.csv                 image_id + 40 attribute columns (-1/1)
  <root>/list_eval_partition.csv              image_id, partition (0 train / 1 val / 2 test)
  (or the original list_attr_celeba.txt + list_eval_partition.txt)"""


def _read_txt_attrs(path: Path) -> pd.DataFrame:
    with open(path) as f:
        lines = f.read().splitlines()
    if len(lines) < 3:
        raise DataError(f"celeba: {path} is too short to be list_attr_celeba.txt", hint=f"expected:\n{LAYOUT}")
    names = lines[1].split()
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    bad = [i + 3 for i, r in enumerate(rows) if len(r) != len(names) + 1][:5]
    if bad:
        raise DataError(f"celeba: {path} lines {bad} do not have {len(names) + 1} fields",
                        hint="the file may be cut off; download it again")
    return pd.DataFrame(rows, columns=["image_id", *names])


def _read_tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    csv_a, csv_p = root / "list_attr_celeba.csv", root / "list_eval_partition.csv"
    txt_a, txt_p = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    if csv_a.is_file() or csv_p.is_file():
        attrs = read_metadata(csv_a, "celeba", LAYOUT)
        part = read_metadata(csv_p, "celeba", LAYOUT)
        require_columns(attrs, ["image_id"], csv_a, "image_id, then the 40 attribute columns (-1/1)")
        require_columns(part, ["image_id", "partition"], csv_p, "image_id, partition (0/1/2)")
        return attrs, part, csv_a
    if txt_a.is_file() or txt_p.is_file():
        attrs = _read_txt_attrs(txt_a) if txt_a.is_file() else None
        if attrs is None or not txt_p.is_file():
            missing = txt_p if attrs is not None else txt_a
            raise DataError(f"celeba: metadata file not found: {missing}", hint=f"expected layout:\n{LAYOUT}")
        part = pd.read_csv(txt_p, sep=r"\s+", header=None, names=["image_id", "partition"], dtype=str)
        return attrs, part, txt_a
    raise DataError(f"celeba: no list_attr_celeba.csv / list_eval_partition.csv in {root}",
                    hint=f"expected layout:\n{LAYOUT}")


def load_celeba(root: str | Path, target: str = "Blond_Hair", attribute: str = "Male") -> Benchmark:
    """Load CelebA with a binary target and a binary spurious attribute taken from its 40 attributes.

    Args:
        root: dataset folder (see module docstring for both layouts).
        target: attribute column used as the class ``y`` (default ``Blond_Hair``).
        attribute: attribute column used as the spurious attribute ``a`` (default ``Male``).

    Returns:
        ``Benchmark`` ``celeba``; classes ``not <target>, <target>``, attributes ``not <attribute>,
        <attribute>`` (for the defaults: ``not blond, blond`` × ``female, male``);
        ``sample_id`` = ``image_id``.

    Raises:
        DataError: root, metadata or image folder missing; target/attribute column missing (the message
            lists the available attributes); values other than -1/0/1; ids without a partition.
    """
    base = require_root(root, "celeba", LAYOUT)
    attrs, part, attr_path = _read_tables(base)
    available = ", ".join(c for c in attrs.columns if c != "image_id")
    require_columns(attrs, [target, attribute], attr_path, "image_id + attribute columns; available: " + available)
    img_dir = base / "img_align_celeba"
    if (img_dir / "img_align_celeba").is_dir():
        img_dir = img_dir / "img_align_celeba"
    if not img_dir.is_dir():
        raise DataError(f"celeba: image folder not found: {base / 'img_align_celeba'}",
                        hint=f"expected layout:\n{LAYOUT}")
    df = attrs[["image_id", target, attribute]].merge(part[["image_id", "partition"]], on="image_id", how="left")
    if df["partition"].isna().any():
        ids = list(df.loc[df["partition"].isna(), "image_id"][:5])
        raise DataError(f"celeba: images without a partition entry: {ids}",
                        hint="list_eval_partition must list every image of list_attr_celeba")
    coded = {}
    for col in (target, attribute):
        v = pd.to_numeric(df[col], errors="coerce")
        bad = ~v.isin([-1, 0, 1])
        if bad.any():
            raise DataError(f"celeba: column {col!r} must hold -1/1 (or 0/1); bad ids "
                            f"{list(df.loc[bad, 'image_id'][:5])}")
        coded[col] = (v > 0).astype(int)
    rel = img_dir.relative_to(base).as_posix()
    table = pd.DataFrame({
        "sample_id": df["image_id"].astype(str),
        "path": rel + "/" + df["image_id"].astype(str),
        "split": map_split(df["partition"], attr_path, "partition").to_numpy(),
        "y": coded[target].to_numpy(),
        "a": coded[attribute].to_numpy(),
    })
    if (target, attribute) == ("Blond_Hair", "Male"):
        cnames, anames = ["not blond", "blond"], ["female", "male"]
    else:
        cnames, anames = [f"not {target}", target], [f"not {attribute}", attribute]
    return Benchmark(name="celeba", root=base, table=table, class_names=cnames, attr_names=anames,
                     params={"root": str(base), "target": target, "attribute": attribute},
                     target_name=target.replace("_", " ").lower(), attr_name=attribute.replace("_", " ").lower())
