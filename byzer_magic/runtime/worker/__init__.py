"""What runs in each Ray Train worker: the training loop, its batches, checkpoints, metrics and speed."""
