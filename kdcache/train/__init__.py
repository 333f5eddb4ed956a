"""Training: models, the KD loss, the loop, checkpoints, teachers, and what keeps a run honest.

``models`` (the seed's networks and factories), ``loss`` (kd_loss/soft_loss), ``loop`` (fit,
evaluate), ``checkpoint`` (weights + provenance, weights_only loads), ``teacher`` (running a
teacher over images), ``resume`` (per-epoch resume state), ``health`` (divergence and chance
warnings). Uses the data layer and the cache format; never a job.
"""
