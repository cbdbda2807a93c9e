"""Retrieval benchmarks: dataset readers, Recall@K and MRR both ways (CLIP_benchmark's protocol), published
results to show beside measured ones."""
