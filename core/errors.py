"""Typed errors raised by the core; every message names the problem and the fix."""

from __future__ import annotations


class MetricCDError(Exception):
    """Base class of every error the core raises on purpose."""


class InputError(MetricCDError, ValueError):
    """The inputs or arguments cannot be processed as given."""


class Cancelled(MetricCDError):
    """The caller asked to stop; no output was written."""


class MissingDependency(MetricCDError, ImportError):
    """A required Python package is not installed."""


class WeightsError(MetricCDError):
    """Backbone weights are unavailable or do not match the backbone."""
