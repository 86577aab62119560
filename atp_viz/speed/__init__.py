"""Speed and export of a pruned model: sparse kernels, measured speedup, safetensors / compressed-tensors export."""
