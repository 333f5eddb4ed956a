"""The data layer: datasets and image folders, one pixel path, sample views, and the Dataset wrapper.

``datasets`` (Fashion-MNIST, folders, the registry), ``folders`` (image folders as they are),
``images`` (decoding and the input transform), ``loader`` (the one DataLoader every job reads
pixels through), ``samples`` (ImageData), ``augment`` (view policies) and ``views`` (stored views
and their schedule), ``batches``/``streaming`` (fit's batch sources, in memory and streamed),
``align`` (matching caches to data row by row), ``wrapper`` (CachedDataset for your own loop).
Uses the cache format (below it); never the training code (above it).
"""
