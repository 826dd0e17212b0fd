"""Model: ViT-MAE backbone, instance and pixel heads, student/teacher network and weight loading."""
