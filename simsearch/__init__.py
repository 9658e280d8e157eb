"""simsearch: find similar photos in your own collection.

    import simsearch
    with simsearch.open("data/photos", create=True) as store:
        store.index("~/Pictures")
        for hit in store.query("probe.jpg", k=10):
            print(hit.score, hit.path)
"""

from .catalog import BrowseKey, Changes, ImageFields, ImageFilter
from .classifier import DEFAULT_CLASSIFIER, Classifier
from .config import DEFAULT_MODEL, ModelSpec, Settings
from .distributed import RayOptions
from .embedding import CallableEmbedder, Embedder
from .hub import HubEmbedder
from .labels import Label
from .errors import (
    ChangedError,
    EmptyStoreError,
    ImageError,
    ModelError,
    ModelMismatchError,
    NotFoundError,
    QueryError,
    SimsearchError,
    StoreError,
)
from .results import (
    CheckReport,
    DuplicateGroup,
    Failure,
    Hit,
    IndexReport,
    Member,
    OptimizeReport,
    Photo,
    Problem,
    Progress,
    StoreStats,
)
from .store import Store, open

__version__ = "0.3.0"  # 0.3.0: schema 3, ImageNet labels; 0.2.0: schema 2 (Alembic), several examples per query

__all__ = [
    "open",
    "Store",
    "Hit",
    "Photo",
    "Member",
    "IndexReport",
    "Progress",
    "Failure",
    "DuplicateGroup",
    "StoreStats",
    "OptimizeReport",
    "CheckReport",
    "Problem",
    "Settings",
    "ImageFilter",
    "BrowseKey",
    "Changes",
    "ImageFields",
    "RayOptions",
    "ModelSpec",
    "Embedder",
    "HubEmbedder",
    "CallableEmbedder",
    "DEFAULT_MODEL",
    "Classifier",
    "DEFAULT_CLASSIFIER",
    "Label",
    "SimsearchError",
    "ChangedError",
    "ImageError",
    "ModelError",
    "ModelMismatchError",
    "StoreError",
    "EmptyStoreError",
    "NotFoundError",
    "QueryError",
    "__version__",
]
