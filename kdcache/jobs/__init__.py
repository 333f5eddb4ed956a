"""Jobs: one function per thing a user asks for, each configured by a few objects from kdcache.config.

``training`` (train_teacher, train_student, evaluate_checkpoint), ``student_targets`` (what a
student learns from), ``dump`` (dump_logits: a checkpoint, a factory or your own nn.Module over a
dataset by name or your own Dataset), ``transfer`` (transfer sets of unlabelled images),
``verify`` (verify_cache), ``compress`` (compress_cache). The CLI and experiments call these.
"""
