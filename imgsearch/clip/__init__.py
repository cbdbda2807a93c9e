"""CLIP in torch: the only package that imports torch and open_clip.

``models`` (names, weights and the recipe each set of weights runs with), ``embedder`` (the towers and the
decode pipeline), ``export`` (ONNX and OpenVINO exports and their checks), ``tensor_decode`` (decoding on the
model's device). Everything outside imports these lazily, when torch has to run.
"""
