#!/usr/bin/env bash
# Place the four Fashion-MNIST files where torchvision's FashionMNIST(root="data") reads them.
# Idempotent. Source 1: Debian's dataset-fashion-mnist package (apt-get download + dpkg -x, no install).
# Source 2 (machines with internet): torchvision's own download.
set -euo pipefail
cd "$(dirname "$0")/.."
raw=data/FashionMNIST/raw
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have_all() { for f in "${files[@]}"; do [ -s "$raw/$f" ] || return 1; done; }
if have_all; then echo "Fashion-MNIST already in $raw"; exit 0; fi
mkdir -p "$raw"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if command -v apt-get >/dev/null; then
  ( cd "$tmp" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get download dataset-fashion-mnist >/dev/null 2>&1; }; } ) || true
fi
deb=$(ls "$tmp"/dataset-fashion-mnist_*.deb 2>/dev/null | head -n1 || true)
if [ -n "$deb" ]; then
  dpkg -x "$deb" "$tmp/x"
  for f in "${files[@]}"; do gunzip -c "$tmp/x/usr/share/datasets/fashion-mnist/$f.gz" > "$raw/.$f.part" && mv "$raw/.$f.part" "$raw/$f"; done
  echo "Fashion-MNIST from Debian's dataset-fashion-mnist -> $raw"
else
  echo "Debian package not available; trying torchvision's download" >&2
  "${PYTHON:-python3}" -c 'import torchvision; [torchvision.datasets.FashionMNIST("data", train=t, download=True) for t in (True, False)]'
fi
have_all || { echo "error: Fashion-MNIST files missing in $raw" >&2; exit 1; }
