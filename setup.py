"""Build script: the package list (src/ plus the configs mapped from conf/).

Metadata lives in pyproject.toml; this file only holds what needs code.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "unipercept.conf"])
