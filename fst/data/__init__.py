"""Training data: photo folders now, webdataset shards for COCO at scale."""
