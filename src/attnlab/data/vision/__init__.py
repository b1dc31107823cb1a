"""Image data of the suite: Fashion-MNIST as pixel sequences (:mod:`.images`) and, for the vision family, as
images, plus scikit-learn's 8x8 digits and a user's image folder (:mod:`.pictures`)."""

from ..registry import register_dataset
from .images import make_fashion_mnist
from .pictures import make_digits, make_fashion_images, make_image_folder

__all__ = ["make_digits", "make_fashion_images", "make_fashion_mnist", "make_image_folder"]

register_dataset("fashion_mnist", make_fashion_mnist, "Fashion-MNIST as a 784-pixel sequence (Debian)",
                 "accuracy", "classify", source="fashion_mnist")
register_dataset("fashion_images", make_fashion_images, "Fashion-MNIST as 1x28x28 images (vision family)",
                 "accuracy", "classify", source="fashion_mnist")
register_dataset("digits", make_digits, "UCI 8x8 digits as 1x8x8 images (scikit-learn's copy)", "accuracy",
                 "classify", source="digits")
register_dataset("image_folder", make_image_folder, "your images: data.options.path with one sub-folder per class",
                 "accuracy", "classify")
