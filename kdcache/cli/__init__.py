"""The kdcache command line: thin wrappers that parse options, call one library function,
and turn kdcache's named errors into one-line messages with exit status 1.

The only package that imports click. ``group`` holds the command group and the error
mapping, ``options`` the options several commands share (their defaults come from
kdcache.config), and the commands live by concept: ``train_commands`` (train-teacher,
train-student, evaluate), ``cache_commands`` (dump-logits, info, verify) and
``experiment_commands`` (pipeline, sweep, report).
"""
from kdcache.cli import cache_commands, experiment_commands, train_commands  # noqa: F401  (each registers its commands on main)
from kdcache.cli.group import main

__all__ = ["main"]
