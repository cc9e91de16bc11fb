#!/usr/bin/env bash
# geogen's main job on the bundled defaults, from a fresh clone:
#   set up .venv -> prepare nowcasting crops from the sample radar data -> print a summary.
# Data: $GEOGEN_DATA, else ../shared/data/pysteps-data, else pysteps' example-data download
# (GEOGEN_DOWNLOAD=1 fetches it; needs internet). Outputs go to $GEOGEN_DEMO_DIR (outputs/demo).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$GEOGEN_ROOT"

OUT="${GEOGEN_DEMO_DIR:-$GEOGEN_ROOT/outputs/demo}"
mkdir -p "$OUT"
if ! DATA="$(python -m geogen.config)"; then
    exit 2  # geogen.config printed how to point geogen at data
fi
echo "[demo] radar data: $DATA"
echo "[demo] outputs:    $OUT"

# 1. Crops for nowcasting: MeteoSwiss, 4 + 18 frames of 5 min, 256 x 256 crops every 128 px,
#    DGMR importance sampling tuned for a small archive; the 2016-07-11 event is held back.
echo "[demo] 1/1 prepare crops (geogen-prepare)"
geogen-prepare source=mch paths.radar_root="$DATA" out="$OUT/mch_nowcast.zarr" \
    crop.stride=128 sampling=small_archive split.method=ranges \
    'split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]' \
    hydra.run.dir="$OUT/logs/prepare"

echo "[demo] done: crop store at $OUT/mch_nowcast.zarr (open it with xarray.open_zarr)"
