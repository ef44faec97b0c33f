"""OFA ProxylessNAS (w1.3) and spaces of its layout."""
