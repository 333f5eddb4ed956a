"""The data layer: datasets and image folders, one sampler, one loader, sample views, and the Dataset wrapper.

``datasets`` (Fashion-MNIST, folders, the registry), ``folders`` (image folders as they are),
``images`` (decoding and the input transform), ``samples`` (ImageData, Batch), ``sampler`` (the one
sampler: seeded epochs, each rank's part), ``loader`` (make_loader: the one DataLoader every job reads
through), ``augment`` (view policies), ``view_schedule`` (their parameters and schedules), ``replay`` (the one view replayer:
parameters -> pixels, for the dump, the student and verify; crop-flip v3 cut from the file in the
decoding workers) and ``views`` (which views a run gets), ``cached_dataset`` (CachedDataset: what every job and your own loop train from,
targets in memory or read from the file), ``align`` (matching caches to data), ``user_data`` (your own Dataset as
kdcache's rows) and ``items`` (what its items are: tuples, dicts, images).
Uses the cache format (below it); never the training code (above it).
"""
