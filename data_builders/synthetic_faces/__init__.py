"""Procedural AU-labelled face videos: the project's built-in default dataset."""

from data_builders.synthetic_faces.synthetic_faces import (
    MINORITY_AUS,
    SyntheticFaces,
    SyntheticFacesConfig,
)

__all__ = ["MINORITY_AUS", "SyntheticFaces", "SyntheticFacesConfig"]
