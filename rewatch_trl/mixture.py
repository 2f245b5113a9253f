"""A training set mixed from several datasets, as open-r1's `dataset_mixture` names them in a recipe, each in its
own format and with its own media (the paper's RL data: ReWatch 20k + Video-R1 10k + LongVideo-Reason 10k).

```yaml
dataset_mixture:
  seed: 0
  datasets:
    - id: data/rewatch/qa.jsonl          # a QA file, a `save_to_disk` directory, or a Hub dataset id
      format: rewatch                    # or video-r1, longvideo-reason, auto (the default)
      captions: data/rewatch/captions.jsonl
      media_root: data/rewatch/videos    # where its rows' videos and images are
      rows: 20000                        # or weight: a fraction of its rows
    - id: Video-R1-data/Video-R1-260k.json
      format: video-r1
      media_root: Video-R1-data
      data_types: [video]                # keep its video rows only
      rows: 10000
```

Each dataset is validated as `rewatch-trl data` validates it, its rows drawn (seeded) and their media paths made
absolute; the mixture holds every column of any of them (a column a dataset lacks is None in its rows).

Example:
```python
>>> mixture = DatasetMixture.from_dict({"datasets": [{"id": "qa.jsonl", "rows": 2}], "seed": 1})
>>> mixture.datasets[0].rows, mixture.seed
(2, 1)
```
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rewatch_trl.data import DataError


logger = logging.getLogger(__name__)


@dataclass
class MixtureDataset:
    """One dataset of a mixture: where it is, its format and media, and how many of its rows to draw (`rows`, or
    `weight`, a fraction; neither: all)."""

    id: str
    format: str = "auto"
    split: str = "train"
    captions: str | None = None
    media_root: str | None = None
    columns: list[str] | None = None
    data_types: list[str] | None = None
    weight: float | None = None
    rows: int | None = None


@dataclass
class DatasetMixture:
    """The datasets of a mixture and the seed that draws and shuffles their rows."""

    datasets: list[MixtureDataset] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_dict(cls, value: dict, source: str = "dataset_mixture") -> "DatasetMixture":
        """A mixture from a recipe's `dataset_mixture`; an unknown key or a bad entry is an error naming it."""
        if not isinstance(value, dict) or not isinstance(value.get("datasets"), list) or not value["datasets"]:
            raise DataError(f"{source}: expected a mapping with a non-empty `datasets` list, got {value!r}")
        _check_keys(value, {"datasets", "seed"}, source)
        known = {f.name for f in dataclasses.fields(MixtureDataset)}
        datasets = []
        for i, entry in enumerate(value["datasets"]):
            where = f"{source}.datasets[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise DataError(f"{where}: expected a mapping with an `id` (a file, a directory or a Hub id)")
            _check_keys(entry, known, where)
            dataset = MixtureDataset(**entry)
            if dataset.weight is not None and dataset.rows is not None:
                raise DataError(f"{where}: give `rows` or `weight`, not both")
            if dataset.weight is not None and not 0 < dataset.weight <= 1:
                raise DataError(f"{where}: `weight` is a fraction of its rows, in (0, 1]; got {dataset.weight}")
            if dataset.rows is not None and (not isinstance(dataset.rows, int) or dataset.rows < 1):
                raise DataError(f"{where}: `rows` must be a positive integer, got {dataset.rows!r}")
            datasets.append(dataset)
        return cls(datasets, value.get("seed", 0))


def _check_keys(value: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def load_mixture(mixture: DatasetMixture, skip_invalid: bool = False):
    """The mixture's rows as one shuffled `Dataset`: each dataset loaded and validated (`data.load_prepared`), its
    `data_types` kept, its `columns` selected, `rows` (or `weight`) of its rows drawn with the mixture's seed, and
    its media paths made absolute under its `media_root`."""
    from datasets import Dataset

    from rewatch_trl.data import load_prepared, video_root_of

    mixed, columns = [], {}
    for i, entry in enumerate(mixture.datasets):
        where = f"dataset_mixture.datasets[{i}] ({entry.id})"
        dataset = load_prepared(entry.id, entry.split, entry.captions, entry.media_root, skip_invalid, entry.format)
        root = video_root_of(entry.id, entry.media_root, dataset)
        if entry.data_types is not None:
            kept = set(entry.data_types)
            dataset = dataset.filter(lambda row, kept=kept: row.get("data_type") in kept, desc="keeping data types")
        if entry.columns is not None:
            missing = [name for name in entry.columns if name not in dataset.column_names]
            if missing:
                raise DataError(
                    f"{where}: no column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}"
                )
            dataset = dataset.select_columns(entry.columns)
        wanted = entry.rows if entry.rows is not None else round(len(dataset) * (entry.weight or 1.0))
        if wanted > len(dataset):
            raise DataError(f"{where}: `rows: {wanted}` asked of a dataset of {len(dataset)} rows")
        dataset = dataset.shuffle(seed=mixture.seed).select(range(wanted))
        rows = dataset.to_list()
        for row in rows:
            for key in ("videos", "image_path"):
                if isinstance(row.get(key), str) and root is not None:
                    row[key] = str((Path(root) / row[key]).absolute())
        logger.info("dataset mixture: %d rows of %s", len(rows), entry.id)
        columns |= dict.fromkeys(dataset.column_names)
        mixed += rows
    dataset = Dataset.from_list([{name: row.get(name) for name in columns} for row in mixed])
    return dataset.shuffle(seed=mixture.seed)
