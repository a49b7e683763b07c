"""The back-ends of the ``pyro-vae`` commands, one module each.

- :mod:`pyro_vae.commands.configs`: the configurations of the commands and the names they
  accept; light (no torch), so that the CLI can build its parsers and print help quickly.
- :mod:`pyro_vae.commands.train`: ``pyro-vae train`` (:func:`~pyro_vae.commands.train.train_run`).
- :mod:`pyro_vae.commands.evaluate`: ``pyro-vae evaluate``
  (:func:`~pyro_vae.commands.evaluate.evaluate_run`).
- :mod:`pyro_vae.commands.compare`: ``pyro-vae compare``
  (:func:`~pyro_vae.commands.compare.compare_run`).

This package imports none of them: import the one you need.
"""
