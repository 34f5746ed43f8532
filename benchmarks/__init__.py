"""Benchmarks: step time, throughput, FLOPs, MFU, memory; input pipeline; vs PyTorch VideoMAE."""
