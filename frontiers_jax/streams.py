"""The random streams of a run, in one table.

Every key a run uses derives from its seed: stream S is
`jax.random.fold_in(jax.random.key(seed), S)`, and a use inside a stream folds
in its own index (the step, the batch, the sampler step). Keys are derived
like this, never carried, so a resumed run draws what an uninterrupted one
does; one table keeps two uses from sharing a stream by accident. The values
are fixed: changing one changes the results of every run that used it.
"""

# JAX key streams: fold_in(key(seed), S).
INIT = 0          # the parameters' initialization (the training loop)
TRAIN = 1         # train steps: fold_in(fold_in(key(seed), TRAIN), step)
EVAL_ATTACK = 2   # adversarial: the attack of the periodic robust evaluation
ROBUSTNESS = 3    # adversarial: the attacks of `frontiers evaluate`
EOT = 4           # adversarial: EOT against PGD under random transformations
EVAL_NOISE = 5    # diffusion: the noise of the evaluation loss
FIGURES = 6       # diffusion: the samples drawn for the figures
EVALUATE = 7      # diffusion: `frontiers evaluate` and `frontiers sample`
SAMPLE = 8        # language models: the samples written when training ends
EVAL_DROPOUT = 11  # uncertainty: the dropout masks of evaluation

# numpy streams of the bias data: np.random.default_rng((seed, S)).
TRAIN_COLOURS = 0
TEST_COLOURS = 1
