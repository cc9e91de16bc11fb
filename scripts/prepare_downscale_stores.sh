#!/usr/bin/env bash
# Build the downscaling pair stores of every radar source of the sample data
# (conf/data/radar_downscale_all.yaml trains on them): 8 frames of 128 x 128 crops of each
# source at its own time step, and their 16 x 16 block means (8 x 8). MeteoSwiss 2015-05-15,
# FMI, BoM radars 2 and 66, OPERA 2018 and 2024 (CIRRUS), MRMS train; RMI Belgium 2021-07-04
# (a whole event of another service) is the validation split that chooses weights and
# settings; MeteoSwiss 2016-07-11 is the test split, scored once per shipped model.
# Crops with any no-data pixel are rejected (task=downscale: reject.max_nan_fraction=0);
# importance sampling (small_archive) keeps the rainy crops and few dry ones; large grids get
# a wider crop stride and sequence stride so that every store stays small (a few minutes in all).
# Usage: bash scripts/prepare_downscale_stores.sh [OUT_DIR] (default outputs/stores/downscale).
# Finished stores are not rebuilt (geogen-prepare is idempotent).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$GEOGEN_ROOT"
OUT="${1:-outputs/stores/downscale}"
mkdir -p "$OUT"
DATA="$(python -m geogen.config)"
TEST='split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]'
VAL='split.ranges.val=[["2021-07-04T00:00","2021-07-05T00:00"]]'
# name  source  crop.stride  sequence.stride  (extra overrides)
STORES=(
    "mch          mch           64  4"
    "fmi          fmi           128 4"
    "rmi          rmi           64  4"
    "bom          bom           64  6"
    "bom_c10      bom_c10       64  12"
    "opera        opera         256 2"
    "opera_cirrus opera_cirrus  256 2"
    "mrms         mrms          256 8"
)
for row in "${STORES[@]}"; do
    read -r name source crop_stride seq_stride <<<"$row"
    geogen-prepare source="$source" task=downscale paths.radar_root="$DATA" out="$OUT/$name.zarr" \
        crop.stride="$crop_stride" sequence.stride="$seq_stride" sampling=small_archive \
        split.method=ranges "$TEST" "$VAL" progress=false hydra.run.dir="$OUT/logs/prepare-$name"
done
echo "[stores] $OUT/{mch,fmi,rmi,bom,bom_c10,opera,opera_cirrus,mrms}.zarr"
