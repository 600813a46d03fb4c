"""Evaluation: datasets (:mod:`anyup.eval.datasets`), baselines (:mod:`anyup.baselines`),
probes, metrics and reports.

Kept import-free on purpose: ``import anyup.eval`` loads nothing heavy; import the
sub-module you need (``anyup.eval.datasets``, ``anyup.eval.metrics``, ...).
"""

from __future__ import annotations
