#!/usr/bin/env bash
# Build the nowcasting crop stores of every 5-minute radar source of the sample data
# (conf/data/radar_5min.yaml trains on them): mch 2015-05-15 and fmi train, rmi 2021-07-04
# (a whole event of another service and year) is the validation split that chooses weights
# and settings, mch 2016-07-11 is the test split, scored once per shipped model. 4 + 18 frames, 256 x 256 crops every 128 px, importance
# sampling for small archives. Usage: bash scripts/prepare_stores.sh [OUT_DIR] (default
# outputs/stores). Finished stores are not rebuilt (geogen-prepare is idempotent).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$GEOGEN_ROOT"
OUT="${1:-outputs/stores}"
mkdir -p "$OUT"
DATA="$(python -m geogen.config)"
TEST='split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]'
VAL='split.ranges.val=[["2021-07-04T00:00","2021-07-05T00:00"]]'
for source in mch fmi rmi; do
    geogen-prepare source=$source paths.radar_root="$DATA" out="$OUT/$source.zarr" \
        crop.stride=128 sampling=small_archive split.method=ranges "$TEST" "$VAL" progress=false \
        hydra.run.dir="$OUT/logs/prepare-$source"
done
echo "[stores] $OUT/{mch,fmi,rmi}.zarr"
