"""Post-processing shared by training data, metrics and the engine: the layer just above :mod:`ppihd.utils`.

- :mod:`.arrays`: uint8 cache bytes -> model input (``float32(x) * float32(1/255)``, the training numbers) and the
  sigmoid;
- :mod:`.tables`: Kaggle submission IDs and the readers of ``predictions.csv`` / ``ID,Label`` files;
- :mod:`.ensemble`: paper eq. 3 rank weights, tau_h / tau_l binarisation, ensembles of files;
- :mod:`.pseudo_label`: FixMatch pseudo-label selection (eq. 2) and ``pseudo.csv``.

Layer rule: this package imports only ``ppihd`` (labels), :mod:`ppihd.utils`, numpy and pandas, so
``ppihd.data``, ``ppihd.metric`` and ``ppihd.engine`` may all import it (tests/test_layers.py checks it).
"""
