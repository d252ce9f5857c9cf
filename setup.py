"""Packaging hook (the metadata is in pyproject.toml): a built package carries the top-level ``conf/``
as ``prunelab/conf``, so an installed prunelab composes its configs from any directory. An editable
install reads ``conf/`` in the checkout instead (``prunelab.config.CONF_DIR``)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildWithConf(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "prunelab" / "conf"
        shutil.rmtree(target, ignore_errors=True)  # no stale group files from an earlier build
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("local", "__pycache__"))


setup(cmdclass={"build_py": BuildWithConf})
