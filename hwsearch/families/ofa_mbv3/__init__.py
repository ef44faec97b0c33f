"""OFA MobileNetV3 (w1.0, w1.2) and spaces of its layout, such as the MNIST demo."""
