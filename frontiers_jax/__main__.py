"""`python -m frontiers_jax <command>`: the same as the `frontiers` command."""

from frontiers_jax.commands import main

if __name__ == '__main__':
  main()
