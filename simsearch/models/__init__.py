"""simsearch's own networks, for users without tfhub.dev, with a TF-Slim checkpoint, or who fine-tune."""

from .inception_v2 import (
    checkpoint_sha256,
    export_module,
    import_slim,
    inception_v2,
    load_slim_checkpoint,
    random_inception_v2,
    save_slim_checkpoint,
    slim_checkpoint_names,
)

__all__ = ["inception_v2", "random_inception_v2", "load_slim_checkpoint", "save_slim_checkpoint",
           "slim_checkpoint_names", "export_module", "import_slim", "checkpoint_sha256"]
