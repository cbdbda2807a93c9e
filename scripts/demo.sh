#!/usr/bin/env bash
# Index a folder of photos and search it by text and by image.
#   bash scripts/demo.sh [FOLDER]      (default: ../shared/data/coco_mini, 239 COCO photos)
# Uses the real pretrained ViT-B-32 (laion2b_s34b_b79k), downloaded and cached by open_clip on first use.
# Set IMGSEARCH_PRETRAINED=/path/to/checkpoint.bin to use a local checkpoint offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FOLDER="${1:-../shared/data/coco_mini}"
INDEX=indexes/demo
IS=.venv/bin/imgsearch
MODEL_ARGS=(--model ViT-B-32 --pretrained "${IMGSEARCH_PRETRAINED:-laion2b_s34b_b79k}")
if ! $IS index "$FOLDER" --collection "$INDEX" "${MODEL_ARGS[@]}"; then
  # imgsearch's own message above says what failed (download, checkpoint, device, disk...).
  echo "demo: indexing with the pretrained model failed (see the error above)." >&2
  echo "demo: running the same pipeline with RANDOM weights instead: rankings below are meaningless." >&2
  INDEX=indexes/demo-random-weights
  $IS index "$FOLDER" --collection "$INDEX" --model ViT-B-32 --pretrained none
fi
$IS info --collection "$INDEX"
echo "--- text -> image: 'a dog playing in the snow'"
$IS query "a dog playing in the snow" --collection "$INDEX" -k 5
FIRST=$(find "$FOLDER" -name '*.jpg' | sort | head -n 1)
echo "--- image -> image: $FIRST"
$IS query --image "$FIRST" --collection "$INDEX" -k 5
