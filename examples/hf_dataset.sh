#!/usr/bin/env bash
# Your data as a Hugging Face dataset, end to end: the commands of the README's "Your data as Hugging Face datasets".
#   bash examples/hf_dataset.sh DS [WORK]      DS: a DatasetDict (train, test) saved with save_to_disk, or a
#                                              folder of Parquet files (train-*.parquet, test-*.parquet)
# Its Image feature is the image and its ClassLabel the label (else --image-column/--label-column); rows are
# decoded from the encoded bytes at --image-size, as a folder's files are, and keyed by those bytes + label.
# EPOCHS (default 5) shortens a trial run; KDCACHE names the command (default: kdcache).
set -euo pipefail
DS=$1
WORK=${2:-runs/hf}
EPOCHS=${EPOCHS:-5}
KD=${KDCACHE:-kdcache}

$KD train-teacher --dataset "hf:$DS" --image-size 64 --epochs "$EPOCHS" --out "$WORK/teacher.pt"
$KD dump-logits --teacher "$WORK/teacher.pt" --dataset "hf:$DS" --out "$WORK/train.h5"   # 64 px: the teacher's
$KD info "$WORK/train.h5"                                                                 # source: hf, columns, keying
$KD verify "$WORK/train.h5" --dataset "hf:$DS" --teacher "$WORK/teacher.pt"               # rows vs the dataset
$KD train-student --cache "$WORK/train.h5" --dataset "hf:$DS" --T 4 --alpha 0.5 --epochs "$EPOCHS" --out "$WORK/student.pt"
$KD evaluate --model "$WORK/student.pt" --dataset "hf:$DS"
