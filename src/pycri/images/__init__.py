"""Images: building test images, importing tarballs, pulling from registries, the image store."""
