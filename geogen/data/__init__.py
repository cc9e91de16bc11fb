"""Data handling: crop datasets and data modules, invertible value transforms, synthetic fields."""
