#!/usr/bin/env bash
# geogen's main job on the bundled defaults, from a fresh clone:
#   set up .venv -> prepare nowcasting crops from the sample radar data -> train DGMR (tiny
#   width, a few minutes on CPU) -> a 20-member DGMR ensemble for a held-back time.
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
echo "[demo] 1/3 prepare crops (geogen-prepare)"
geogen-prepare source=mch paths.radar_root="$DATA" out="$OUT/mch_nowcast.zarr" \
    crop.stride=128 sampling=small_archive split.method=ranges \
    'split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]' \
    hydra.run.dir="$OUT/logs/prepare"

# 2. DGMR at a small width (experiment=dgmr_tiny) on the training split (the 2015-05-15 event),
#    for a bounded time (GEOGEN_DEMO_TRAIN_TIME, default 4 minutes; a GAN this short-trained
#    makes noisy forecasts: the point is the pipeline). The store has no validation split (the
#    archive holds two events: one trains, one is held back), so validation is skipped.
TRAIN_DIR="$OUT/train/dgmr_tiny"
rm -rf "$TRAIN_DIR"
echo "[demo] 2/3 train dgmr_tiny (geogen-train, ${GEOGEN_DEMO_TRAIN_TIME:-00:00:04:00} on CPU)"
geogen-train experiment=dgmr_tiny data.path="$OUT/mch_nowcast.zarr" \
    trainer.max_time="${GEOGEN_DEMO_TRAIN_TIME:-00:00:04:00}" trainer.max_epochs=100 \
    callbacks.progress_bar.refresh_rate=5 hydra.run.dir="$TRAIN_DIR"

# 3. A 20-member DGMR ensemble for the held-back case 2016-07-11 22:00 (the test split), on a
#    rainy 256 x 256 window of the MeteoSwiss grid, straight from the raw archive.
echo "[demo] 3/3 20-member DGMR forecast (geogen-forecast model=dgmr)"
mkdir -p "$OUT/forecasts"
geogen-forecast model=dgmr ckpt="$TRAIN_DIR/checkpoints/last.ckpt" source=mch \
    paths.radar_root="$DATA" time=2016-07-11T22:00 members=20 leads=18 \
    'region=[96,288,256,256]' progress=false out="$OUT/forecasts/dgmr.nc" \
    hydra.run.dir="$OUT/logs/forecast"

echo "[demo] done: crop store $OUT/mch_nowcast.zarr, DGMR run $TRAIN_DIR (checkpoints, panels/),"
echo "[demo]       forecast $OUT/forecasts/dgmr.nc (open it with geogen.forecasting.open_forecast)"
