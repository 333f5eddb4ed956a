"""The data layer: datasets and image folders, one pixel path, sample views, and the Dataset wrapper.

``datasets`` (Fashion-MNIST, folders, the registry), ``folders`` (image folders as they are),
``images`` (decoding and the input transform), ``loader`` (the one DataLoader every job reads
pixels through), ``samples`` (ImageData), ``augment`` (view policies), ``view_schedule`` (their
parameters and schedules) and ``views`` (which views a run gets), ``batches``/``streaming`` (fit's batch sources, in memory and streamed),
``align`` (matching caches to data row by row), ``cached_dataset`` (CachedDataset for your own loop).
Uses the cache format (below it); never the training code (above it).
"""
