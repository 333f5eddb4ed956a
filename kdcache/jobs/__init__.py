"""Jobs: one function per thing a user asks for, each configured by a few objects from kdcache.config.

``training`` (train_teacher, train_student, evaluate_checkpoint), ``student_targets`` (what a
student learns from), ``dump`` (dump_logits),
``foreign`` (your own model and Dataset as a teacher), ``transfer`` (transfer sets of
unlabelled images), ``verify`` (verify_cache). The CLI and experiments call these.
"""
