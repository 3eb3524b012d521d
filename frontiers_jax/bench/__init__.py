"""PyTorch twins and the JAX-vs-PyTorch benchmark."""

# The benchmark's rows, in the order they run (built in `run.builders`).
ROWS = ('cnn_train', 'pgd10', 'unet_train', 'ddim50', 'gpt_train_0.8M', 'gpt_train_10M',
        'gpt_decode_b1', 'gpt_decode_b8')
