"""The kdcache command line: thin wrappers that parse options, call one library function,
and turn kdcache's named errors into one-line messages with exit status 1.

The only package that imports click. ``group`` holds the command group and the error
mapping, ``options`` the options several commands share (their defaults come from
kdcache.config), and the commands live by concept: ``training`` (train-teacher,
train-student, evaluate), ``caches`` (dump-logits, info, verify) and ``experiments``
(pipeline, sweep, report).
"""
from . import caches, experiments, training  # noqa: F401  (each registers its commands on main)
from .group import main

__all__ = ["main"]
