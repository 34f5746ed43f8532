"""Face-video corpora for pre-training (VoxCeleb2, CelebV-HQ, FaceForensics++, VFHQ, MEAD)."""

from data_builders.face_videos.face_videos import CORPORA, FaceVideos, FaceVideosConfig

__all__ = ["CORPORA", "FaceVideos", "FaceVideosConfig"]
