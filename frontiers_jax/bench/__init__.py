"""PyTorch twins and the JAX-vs-PyTorch benchmark."""
