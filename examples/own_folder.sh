#!/usr/bin/env bash
# Your own images, end to end: the commands of the README's "Your own images" section, in order.
#   bash examples/own_folder.sh ROOT [WORK]      ROOT/train/<class>/*.jpg|png, ROOT/test/<class>/*
# Images may have any size and mode; they are decoded as they are read, at --image-size.
# EPOCHS (default 5) shortens a trial run; KDCACHE names the command (default: kdcache).
set -euo pipefail
ROOT=$1
WORK=${2:-runs/own}
EPOCHS=${EPOCHS:-5}
KD=${KDCACHE:-kdcache}

$KD train-teacher --dataset imagefolder --data-dir "$ROOT" --image-size 64 --epochs "$EPOCHS" --out "$WORK/teacher.pt"
$KD dump-logits --teacher "$WORK/teacher.pt" --data-dir "$ROOT" --out "$WORK/train.h5"   # folder and 64 px: the teacher's
$KD info "$WORK/train.h5"                                                                   # shows the input transform
$KD verify "$WORK/train.h5" --data-dir "$ROOT" --teacher "$WORK/teacher.pt"                 # rows vs files, teacher re-run
$KD train-student --cache "$WORK/train.h5" --data-dir "$ROOT" --T 4 --alpha 0.5 --epochs "$EPOCHS" --out "$WORK/student.pt"
$KD evaluate --model "$WORK/student.pt" --data-dir "$ROOT"
# a torchvision student (BatchNorm) on labels alone; the cache names the data and the input size
$KD train-student --cache "$WORK/train.h5" --data-dir "$ROOT" --student-factory torchvision.models:resnet18 --alpha 0 --epochs "$EPOCHS" --out "$WORK/resnet18.pt"
$KD evaluate --model "$WORK/resnet18.pt" --data-dir "$ROOT" --student-factory torchvision.models:resnet18
