"""The experiments, one config file each.

`frontiers train --config=lm:tiny` names `lm.py` here and its variant `tiny`;
a path (`--config=my/exp.py:variant`) names any other file. Each file defines
`get_config(variant)` and `VARIANTS`, a line about each variant, the default
first; `frontiers configs` lists them.
"""
