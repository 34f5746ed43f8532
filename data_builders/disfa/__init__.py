"""DISFA: 27 subjects filmed by two cameras, per-AU intensity labels (manual download)."""

from data_builders.disfa.disfa import AUS, MINORITY_AUS, PARTS, Disfa, DisfaConfig

__all__ = ["AUS", "MINORITY_AUS", "PARTS", "Disfa", "DisfaConfig"]
