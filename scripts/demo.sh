#!/usr/bin/env bash
# geogen's main job on the bundled defaults, from a fresh clone:
#   set up .venv -> prepare nowcasting crops from the sample radar data -> train dgmr_steps
#   (CPU width, a few minutes) -> reference nowcasts (persistence, pysteps extrapolation,
#   pysteps STEPS), 20-member ensembles of the fresh dgmr_steps and of the shipped dgmr_steps
#   and dgmr_advect checkpoints for the held-back case -> score every forecast
#   in $OUT/forecasts against the archive -> plots and report.md; then downscaling: pairs
#   (128 x 128 crops and their 16 x 16 block means) -> a briefly trained residual downscaler
#   -> interp, RainFARM (and learned) ensembles of the held-back case, coarsened
#   by 16 -> scores against the truth in $OUT/scores-downscale (with the paper's table).
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
STARTED=$SECONDS
stage() {  # stage N "what": print the stage with the minutes:seconds since the demo started
    local t=$((SECONDS - STARTED))
    printf '[demo] %s/9 %s  (at %d:%02d)\n' "$1" "$2" $((t / 60)) $((t % 60))
}

# 1. Crops for nowcasting: MeteoSwiss, 4 + 18 frames of 5 min, 256 x 256 crops every 128 px,
#    DGMR importance sampling tuned for a small archive; the 2016-07-11 event is held back.
stage 1 "prepare nowcasting crops (geogen-prepare)"
geogen-prepare source=mch paths.radar_root="$DATA" out="$OUT/mch_nowcast.zarr" \
    crop.stride=128 sampling=small_archive split.method=ranges \
    'split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]' \
    hydra.run.dir="$OUT/logs/prepare"

echo "[demo]      crop store at $OUT/mch_nowcast.zarr (open it with xarray.open_zarr)"

# 2. dgmr_steps at CPU width (experiment=dgmr_steps_tiny) on the training split (the 2015-05-15
#    event), for a bounded time (GEOGEN_DEMO_TRAIN_TIME, default 3 minutes): a generator that
#    reads one pysteps STEPS member per output member and learns a residual over it (zero at
#    the start, so a briefly trained model is already a realistic STEPS-like ensemble). Its
#    STEPS members (4 per crop) and advection forecasts are computed once and cached beside
#    the store (about 3 minutes). The store has no validation split (the archive holds two
#    events: one trains, one is held back), so validation is skipped and last.ckpt is used.
TRAIN_DIR="$OUT/train/dgmr_steps_tiny"
rm -rf "$TRAIN_DIR"
stage 2 "train dgmr_steps_tiny (geogen-train, ${GEOGEN_DEMO_TRAIN_TIME:-00:00:03:00} on CPU)"
geogen-train experiment=dgmr_steps_tiny data.path="$OUT/mch_nowcast.zarr" \
    trainer.max_time="${GEOGEN_DEMO_TRAIN_TIME:-00:00:03:00}" trainer.max_epochs=100 \
    callbacks.progress_bar.refresh_rate=5 hydra.run.dir="$TRAIN_DIR"

# 3. Reference nowcasts for the held-back case: issue time 2016-07-11 22:00 UTC, the 256 x 256
#    window [y0=160, x0=320] of the MeteoSwiss grid, 18 leads of 5 min. The window is where the
#    rain is at 22:00-23:30 (26% of its pixels >= 0.1 mm/h at issue time, 34% over the leads,
#    no missing pixels): the rainiest 256 x 256 window of the composite without no-data.
#    pysteps methods forecast from a context 96 px wider on each side (margin=96), so rain
#    moving into the window comes from the radar data around it, as on the full domain.
#    Every *.nc in $OUT/forecasts is scored below: other models add their files there.
CASE=(time=2016-07-11T22:00 'region=[160,320,256,256]' leads=18 paths.radar_root="$DATA")
FORECASTS="$OUT/forecasts"
mkdir -p "$FORECASTS"
stage 3 "reference forecasts (geogen-forecast) -> $FORECASTS"
geogen-forecast model=persistence members=1 "${CASE[@]}" out="$FORECASTS/persistence.nc" \
    progress=false hydra.run.dir="$OUT/logs/forecast-persistence"
geogen-forecast model=pysteps_extrapolation members=1 margin=96 "${CASE[@]}" \
    out="$FORECASTS/pysteps_extrapolation.nc" progress=false \
    hydra.run.dir="$OUT/logs/forecast-extrapolation"
geogen-forecast model=pysteps_steps members=20 seed=24 margin=96 "${CASE[@]}" \
    out="$FORECASTS/pysteps_steps.nc" progress=false hydra.run.dir="$OUT/logs/forecast-steps"

# 4. 20-member ensembles of the learned models for the same case: the freshly trained
#    dgmr_steps, and the checkpoints geogen ships (checkpoints/, trained on every 5-minute
#    radar source, weights chosen on the validation event; SHA-256 checked on loading):
#    dgmr_steps and dgmr_advect, all from the same wider context (margin) as pysteps.
stage 4 "20-member dgmr_steps (fresh and shipped) and shipped dgmr_advect forecasts"
geogen-forecast model=dgmr_steps ckpt="$TRAIN_DIR/checkpoints/last.ckpt" members=20 seed=24 \
    margin=96 "${CASE[@]}" out="$FORECASTS/dgmr_steps_fresh.nc" progress=false \
    hydra.run.dir="$OUT/logs/forecast-dgmr-steps-fresh"
geogen-forecast model=dgmr_steps members=20 seed=24 margin=96 "${CASE[@]}" \
    out="$FORECASTS/dgmr_steps.nc" progress=false hydra.run.dir="$OUT/logs/forecast-dgmr-steps"
geogen-forecast model=dgmr_advect members=20 margin=96 "${CASE[@]}" \
    out="$FORECASTS/dgmr_advect.nc" progress=false hydra.run.dir="$OUT/logs/forecast-dgmr-advect"

# 5. Scores of every forecast against the archive, plots (with GIFs of members) and the report.
stage 5 "score every forecast in $FORECASTS (geogen-score)"
geogen-score "forecasts=['$FORECASTS/*.nc']" paths.radar_root="$DATA" out="$OUT/scores" \
    progress=false hydra.run.dir="$OUT/logs/score"


# 6. Downscaling pairs from the same archive: 8-frame sequences (every 2nd start) of 128 x 128
#    crops and their 16 x 16 block means (8 x 8), the same held-back test range as above.
stage 6 "prepare downscaling pairs (geogen-prepare task=downscale)"
geogen-prepare source=mch task=downscale paths.radar_root="$DATA" out="$OUT/mch_downscale.zarr" \
    sequence.stride=2 sampling=small_archive split.method=ranges \
    'split.ranges.test=[["2016-07-11T00:00","2016-07-12T06:00"]]' \
    hydra.run.dir="$OUT/logs/prepare-downscale"

# 7. The residual downscaler (RainFARM + a learned residual, the shipped model's recipe),
#    trained briefly on the training pairs (GEOGEN_DEMO_DS_TRAIN_TIME, default 2 minutes),
#    then a 20-member ensemble of the held-back case.
DOWNSCALED="$OUT/downscaled"
GAN_DIR="$OUT/train/downscale_residual_tiny"
DS_CASE=(source=mch time=2016-07-11T22:00 'region=[160,320,256,256]' coarsen=16 length=8
    paths.radar_root="$DATA" progress=false)
rm -rf "$DOWNSCALED"
mkdir -p "$DOWNSCALED"
rm -rf "$GAN_DIR"
stage 7 "train downscale_residual_tiny (geogen-train, ${GEOGEN_DEMO_DS_TRAIN_TIME:-00:00:02:00} on CPU)"
geogen-train experiment=downscale_residual_tiny data.path="$OUT/mch_downscale.zarr" \
    trainer.max_time="${GEOGEN_DEMO_DS_TRAIN_TIME:-00:00:02:00}" trainer.max_epochs=1000 \
    callbacks.progress_bar.refresh_rate=5 hydra.run.dir="$GAN_DIR"
geogen-downscale model=downscale_gan ckpt="$GAN_DIR/checkpoints/last.ckpt" members=20 \
    "${DS_CASE[@]}" out="$DOWNSCALED/downscale_gan_fresh.nc" hydra.run.dir="$OUT/logs/downscale-gan"

# 8. The shipped downscaler (checkpoints/, trained on every radar source, SHA-256 checked) and
#    the references for the held-back case: the 8 frames ending 2016-07-11 22:00 of the same
#    256 x 256 window, coarsened by 16 x 16 block means (16 x 16 pixels of 16 km), downscaled
#    back to 1 km by interpolation and by a 20-member RainFARM ensemble.
stage 8 "downscale the held-back case (shipped downscale_gan, interp, rainfarm) -> $DOWNSCALED"
geogen-downscale model=downscale_gan members=20 "${DS_CASE[@]}" \
    out="$DOWNSCALED/downscale_gan.nc" hydra.run.dir="$OUT/logs/downscale-gan-shipped"
geogen-downscale model=interp members=1 "${DS_CASE[@]}" out="$DOWNSCALED/interp.nc" \
    hydra.run.dir="$OUT/logs/downscale-interp"
geogen-downscale model=rainfarm members=20 seed=7 "${DS_CASE[@]}" out="$DOWNSCALED/rainfarm.nc" \
    hydra.run.dir="$OUT/logs/downscale-rainfarm"

# 9. Scores of every downscaled ensemble against the 1 km truth: mm/h scores and the paper's
#    normalised log units beside its table.
stage 9 "score every downscaled file in $DOWNSCALED (geogen-score task=downscale)"
geogen-score task=downscale "forecasts=['$DOWNSCALED/*.nc']" paths.radar_root="$DATA" \
    out="$OUT/scores-downscale" progress=false hydra.run.dir="$OUT/logs/score-downscale"

t=$((SECONDS - STARTED))
printf '[demo] done in %d:%02d\n' $((t / 60)) $((t % 60))
echo "[demo]   nowcasts:    report at $OUT/scores/report.md (scores.csv, plots/ beside it); DGMR"
echo "[demo]                run in $TRAIN_DIR (checkpoints/, panels/)"
echo "[demo]   downscaling: report at $OUT/scores-downscale/report.md; ensembles in $DOWNSCALED"
