"""OFA ResNet50: bottleneck stages with elastic depth, expand ratio and width."""
