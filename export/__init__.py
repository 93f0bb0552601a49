"""Verified export of the streaming step/prefill graphs: ONNX (QDQ) and TVM (CPU, Jetson, GPU)."""
