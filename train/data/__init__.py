"""Interaction data: fetch, readers, a synthetic generator, filters, splits and the ``Dataset`` container.

    python -c "import train.data as d, train.config as c; print(d.load_dataset(c.DataConfig()).summary())"
    python -c "import train.data as d, train.config as c; print(d.load_dataset(c.DataConfig(name='synthetic-longtail')).summary())"

``load_dataset(config)`` runs one pipeline whatever the source:

1. read external ids (strings; integers from the generator and LightGCN files), plus ratings and
   timestamps where the format has them (a delimited file's columns found by its header's names,
   ``headers``, or ``DataConfig.columns``; docs/data.md);
2. keep ratings >= ``threshold`` (``None`` keeps everything);
3. drop repeated (user, item) pairs, keeping the first in input order;
4. k-core: repeatedly drop users and items with fewer than ``k_core`` interactions;
5. map the external ids that are left to contiguous internal ids in sorted order (numeric order
   when every id is a canonical integer, ``"2" < "10"``; code-point order otherwise);
6. split: per-user random ratios, leave-last-out by timestamp, or the given test file (LightGCN);
   a split left empty by too small a file, or a test user without train, is a DataError.

Sources (``DataConfig.name``): ``ml-100k`` (the MovieLens-100K ``.inter`` file shipped in the
``recbole==1.2.1`` wheel, fetched once and checked by sha256), ``gowalla`` (the LightGCN split,
shipped gzip-compressed in ``train/datasets/gowalla/`` and checked by sha256 at every read),
``synthetic``,
``synthetic-longtail``, or a path to a file or folder; ``DataConfig.format="auto"`` picks the
reader from the name (see :func:`detect_format`).

One module per step: ``interactions`` (``RawInteractions``, ``DataError``), ``fetch`` (ML-100K from
the wheel, the shipped Gowalla files), ``readers`` (one per file format), ``headers`` (which
column name means user, item, rating, timestamp), ``synthetic`` (the
generator), ``filters`` (id maps, de-duplication, k-core), ``split`` (random and leave-last-out),
``dataset`` (``Dataset`` and its folder on disk), ``load`` (``load_dataset``, ``detect_format``).
The names below are the package's interface; import them from ``train.data``.
"""

from .dataset import SAVE_FORMAT_VERSION, SPLITS, Dataset
from .fetch import ML100K_MEMBER, ML100K_SHA256, ML100K_WHEEL, SHIPPED_LIGHTGCN, fetch_ml100k, shipped_folder
from .filters import encode_ids, first_occurrences, k_core_filter
from .interactions import DataError, RawInteractions
from .load import FORMATS, detect_format, load_dataset
from .readers import (
    ColumnError,
    read_delimited,
    read_lightgcn,
    read_movielens,
    read_ratings_dat,
    read_recbole_inter,
)
from .split import split_leave_last_out, split_random
from .synthetic import SYNTHETIC_PRESETS, synthetic_interactions

__all__ = [
    "FORMATS", "ML100K_MEMBER", "ML100K_SHA256", "ML100K_WHEEL", "SAVE_FORMAT_VERSION", "SHIPPED_LIGHTGCN",
    "SPLITS", "SYNTHETIC_PRESETS", "ColumnError", "DataError", "Dataset", "RawInteractions", "detect_format", "encode_ids",
    "fetch_ml100k", "first_occurrences", "k_core_filter", "load_dataset", "read_delimited", "read_lightgcn",
    "read_movielens", "read_ratings_dat", "read_recbole_inter", "shipped_folder", "split_leave_last_out",
    "split_random", "synthetic_interactions",
]
