"""Inference backends: how CLIP towers run (torch, ONNX Runtime) and what a text or image query needs without torch.

Nothing here imports torch. ``backends`` chooses; ``onnx`` owns onnxruntime; ``tokenizer`` and ``preprocess`` are the
torch-free halves of open_clip's tokenizer and image transform, tested against open_clip's own.
"""
