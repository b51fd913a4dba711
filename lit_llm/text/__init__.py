"""Text processing that both modules and datamodules use: masking, segmentation, augmentation, entities."""
