"""Data: COCO parsing and filtering, box-crop geometry, augmentation, datasets and the Lightning DataModule."""
