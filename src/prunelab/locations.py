"""Where the project's config groups are: a leaf module (standard library only), so that code that
must run without Hydra or OmegaConf (``prunelab.bench.gpu_check`` on a bare GPU image) finds them."""

from __future__ import annotations

from pathlib import Path


def _conf_dir() -> Path:
    """The copy a built package carries (``setup.py`` puts the top-level ``conf/`` there), else
    ``conf/`` of the checkout (source tree, editable install)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parents[1] / "conf"


CONF_DIR = _conf_dir()
