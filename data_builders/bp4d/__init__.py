"""BP4D-Spontaneous: 41 subjects x 8 tasks, AU occurrence labels (manual download)."""

from data_builders.bp4d.bp4d import AUS, MINORITY_AUS, PARTS, Bp4d, Bp4dConfig

__all__ = ["AUS", "MINORITY_AUS", "PARTS", "Bp4d", "Bp4dConfig"]
