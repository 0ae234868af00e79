"""segment_anything's model modules, imported without its package's predictor.

``segment_anything/__init__.py`` imports ``SamPredictor`` and ``SamAutomaticMaskGenerator``,
which import torchvision, whose ops import ``torch._dynamo``: seconds of CPU in every
process that builds a model (each Segmenter actor and each Train worker, at every start and
restart; docs/performance.md), for code this project never calls.
``segment_anything.modeling`` imports only within itself, so this module registers the
package's module object *without running its ``__init__``* and imports
``segment_anything.modeling`` under its own name. The first attribute asked of the package
that it does not have yet (``sam_model_registry``, ``SamPredictor``, ...) runs the
``__init__`` then, on that same module object (PEP 562), so ``from segment_anything import
SamPredictor`` anywhere later in the process works as before.

Every module of ``samadapter`` imports segment_anything's classes from here.
"""

from __future__ import annotations

import importlib.util
import sys


def _register_package_with_its_init_deferred() -> None:
    if "segment_anything" in sys.modules:  # imported already (whole or deferred): nothing to save
        return
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed (or not a package): the import below raises the usual error
    package = importlib.util.module_from_spec(spec)

    def run_init_on_first_use(name: str):
        del package.__getattr__  # the __init__'s own lookups see a plain module
        try:
            spec.loader.exec_module(package)
        except BaseException:
            package.__getattr__ = run_init_on_first_use
            raise
        return getattr(package, name)

    package.__getattr__ = run_init_on_first_use
    sys.modules["segment_anything"] = package


_register_package_with_its_init_deferred()

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer, common  # noqa: E402
from segment_anything.modeling.image_encoder import Attention, get_rel_pos  # noqa: E402

__all__ = ["Attention", "ImageEncoderViT", "MaskDecoder", "PromptEncoder", "TwoWayTransformer", "common", "get_rel_pos"]
