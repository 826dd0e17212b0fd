"""Engine: LightningModule, schedules, checkpoints, metrics and the train/evaluate/inference jobs."""
